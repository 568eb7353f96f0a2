"""The ``armcpu`` command: the core's algebra over profile files, for planning before a cluster."""
