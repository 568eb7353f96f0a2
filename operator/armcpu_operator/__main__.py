import sys

from armcpu_operator.main import main

sys.exit(main())
