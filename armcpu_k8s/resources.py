"""The API resources armcpu reads and writes, as typed handles: one place spells each path.

``NODES.item("n1")`` is ``/api/v1/nodes/n1``; ``VMS.item("vm", "ns")`` is
``/apis/kubevirt.io/v1/namespaces/ns/virtualmachines/vm``. A handle knows whether its kind is
namespaced, so asking for a namespaced item without a namespace fails at once instead of sending a
request the API server answers with 404.
"""

from __future__ import annotations

from dataclasses import dataclass

from armcpu_k8s.group import GROUP, VERSION


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool

    @property
    def api(self) -> str:
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"

    def collection(self, namespace: str | None = None) -> str:
        """Every object (across namespaces when ``namespace`` is None), or one namespace's."""
        if namespace is not None and not self.namespaced:
            raise ValueError(f"{self.plural} are cluster-scoped: no namespace {namespace!r}")
        return f"{self.api}/namespaces/{namespace}/{self.plural}" if namespace is not None else f"{self.api}/{self.plural}"

    def item(self, name: str, namespace: str | None = None) -> str:
        if self.namespaced and not namespace:
            raise ValueError(f"{self.plural} are namespaced: {name!r} needs a namespace")
        return f"{self.collection(namespace if self.namespaced else None)}/{name}"

    def status(self, name: str, namespace: str | None = None) -> str:
        return f"{self.item(name, namespace)}/status"


NODES = Resource("", "v1", "nodes", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps", namespaced=True)
EVENTS = Resource("", "v1", "events", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", namespaced=True)
CPUMODELS = Resource(GROUP, VERSION, "cpumodels", namespaced=False)
NODECPUPROFILES = Resource(GROUP, VERSION, "nodecpuprofiles", namespaced=False)
VMS = Resource("kubevirt.io", "v1", "virtualmachines", namespaced=True)
VMIS = Resource("kubevirt.io", "v1", "virtualmachineinstances", namespaced=True)
MUTATING_WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", namespaced=False)
VALIDATING_WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", namespaced=False)
DEPLOYMENTS = Resource("apps", "v1", "deployments", namespaced=True)
DAEMONSETS = Resource("apps", "v1", "daemonsets", namespaced=True)
PODS = Resource("", "v1", "pods", namespaced=True)
