"""The operator's pure planners: a CpuModel and a frozen :class:`~armcpu_operator.planning.world.World`
in, a typed :class:`~armcpu_operator.planning.world.ModelPlan` out. Nothing here does I/O, imports
kopf, asyncio or the API client (an import-linter contract in ``pyproject.toml`` keeps it so)."""
