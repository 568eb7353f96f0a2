"""The ``armcpu-operator`` console script: the operator needs the ``k8s`` extra (kopf, pydantic),
which a plain ``pip install armcpu`` (CLI and agent) does not bring; say so instead of a traceback."""

from __future__ import annotations

import sys

EXTRA_MODULES = ("kopf", "pydantic", "pydantic_core")


def main(argv: list[str] | None = None) -> int:
    try:
        from armcpu_operator.main import main as operator_main
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRA_MODULES:
            raise
        print(f"armcpu-operator: {exc.name} is not installed; the operator needs the k8s extra: pip install 'armcpu[k8s]'",
              file=sys.stderr)
        return 2
    return operator_main(argv)


if __name__ == "__main__":
    sys.exit(main())
