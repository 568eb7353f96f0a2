"""armcpu's operator (import name ``armcpu_operator``: ``operator`` is a standard-library module).

``main`` runs it; ``handlers`` registers the kopf handlers; ``plan`` is the pure reconcile;
``act`` writes; ``spec`` reads a CpuModel's spec; ``leader`` holds the Lease.
"""
