"""The operator's Prometheus metrics (one registry, served on --listen)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
MODELS = Gauge("armcpu_operator_cpumodels", "CpuModels being reconciled", registry=REGISTRY)
NODES = Gauge("armcpu_operator_cpumodel_nodes", "Nodes per CpuModel, by state", ["cpumodel", "state"], registry=REGISTRY)
REVISION = Gauge("armcpu_operator_cpumodel_revision", "Current revision per CpuModel", ["cpumodel"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("armcpu_operator_reconcile_duration_seconds", "Time to reconcile one CpuModel", registry=REGISTRY,
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
RECONCILE_ERRORS = Counter("armcpu_operator_reconcile_errors_total", "Reconciles that failed", ["cpumodel"], registry=REGISTRY)
API_WRITES = Counter("armcpu_operator_api_writes_total", "Write requests sent to the API server", ["verb", "code"], registry=REGISTRY)
LEADER = Gauge("armcpu_operator_leader", "1 while this replica holds the leader Lease", registry=REGISTRY)


def forget(model: str) -> None:
    """Drop a deleted CpuModel's series."""
    for metric, labelsets in ((NODES, [(model, s) for s in ("selected", "compatible", "incompatible")]), (REVISION, [(model,)])):
        for labelset in labelsets:
            try:
                metric.remove(*labelset)
            except KeyError:
                pass
