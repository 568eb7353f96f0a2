"""armcpu's operator (import name ``armcpu_operator``: ``operator`` is a standard-library module).

Nothing is implemented here yet; the package exists so that the layout works with
``pip install -e .``, pytest, mypy and ruff from the start.
"""
