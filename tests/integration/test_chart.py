"""The Helm chart with the real helm and kube-apiserver: lint, schema, server-side validation, install,
upgrade, uninstall; and RBAC tested, not guessed — the operator, the agent and the cleanup hook run
with tokens of the chart's own service accounts, do their whole job, use every verb they are
granted (read from the audit log) and are refused what they are not."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from armcpu_k8s import labels
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_operator import hookmaps
from armcpu_operator.planning import hooks, vms
from armcpu_testing import thirdparty
from armcpu_testing.controlplane import ControlPlane
from node_agent.cpumodels import CpuModels
from node_agent.publish import publish
from tests.helpers import REPO
from tests.operator_harness import add_node, make_profile, running_operator, wait_for

pytestmark = pytest.mark.integration
CHART = str(REPO / "charts/armcpu")
NS = "armcpu-chart"
RELEASE = "armcpu-chart"
KUBE_VERSION = ("--kube-version", "1.35.4")
ALL_ON = ("--set", "monitoring.serviceMonitor=true", "--set", "monitoring.podMonitor=true", "--set", "monitoring.prometheusRule=true",
          "--set", "webhook.certManager.enabled=true", "--set", "agent.featureLabels=true", "--set", "vmm.sysreg=true", "--set", "vmm.implCpu=true",
          "--set", "webhook.launcherPodFailurePolicy=Fail")
G4 = "kvm-guest/graviton4-neoverse-v2-host6.18.json"
G3 = "kvm-guest/graviton3-neoverse-v1-host6.18.json"
VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}
spec:
  runStrategy: Halted
  template:
    spec:
      domain: {{cpu: {{model: host-passthrough}}, devices: {{}}, memory: {{guest: 1Gi}}}}
"""
RUNNING_HOOKED_VMI = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: started-with-hook
  namespace: chart-clean-running
  annotations: {armcpu.io/cpumodel: m, armcpu.io/revision: "3", armcpu.io/qemu-cpu: "host,SYSREG_ID_AA64ISAR0_EL1_SM3=0"}
spec:
  domain: {devices: {}, memory: {guest: 1Gi}}
"""


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(plane: ControlPlane, *args: str) -> str:
    return plane.helm("template", RELEASE, CHART, "--namespace", NS, *KUBE_VERSION, *args)


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    return Kube(load_kubeconfig(control_plane.kubeconfig))


@pytest.fixture(scope="module")
def thirdparty_crds(control_plane: ControlPlane) -> None:
    for path in thirdparty.crd_files():
        control_plane.kubectl("apply", "--server-side", "-f", str(path))
    for crd in ("servicemonitors.monitoring.coreos.com", "podmonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com",
                "certificates.cert-manager.io", "issuers.cert-manager.io"):
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, admin: Kube) -> Iterator[None]:
    control_plane.helm("install", RELEASE, CHART, "--namespace", NS, "--create-namespace")
    yield
    # No kubelet runs here, so the pre-delete cleanup Job could never finish: skip hooks (the cleanup
    # command itself is tested below with the hook's own service account).
    control_plane.helm("uninstall", RELEASE, "--namespace", NS, "--no-hooks")


def test_lint_strict_with_default_and_all_values(control_plane: ControlPlane) -> None:
    control_plane.helm("lint", "--strict", CHART, *KUBE_VERSION)
    control_plane.helm("lint", "--strict", CHART, *KUBE_VERSION, *ALL_ON)


@pytest.mark.parametrize(("value", "message"), [
    ("operator.replica=2", "additional properties 'replica' not allowed"),
    ("webhook.failurePolicy=Sometimes", "value must be one of 'Ignore', 'Fail'"),
    ("agent.intervalSeconds=5", "minimum: got 5, want 30"),
])
def test_values_schema_rejects_typos(control_plane: ControlPlane, value: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        render(control_plane, "--set", value)


@pytest.mark.parametrize("options", [(), ALL_ON], ids=["defaults", "all-on"])
def test_rendered_manifests_pass_server_side_validation(control_plane: ControlPlane, thirdparty_crds: None, options: tuple[str, ...]) -> None:
    control_plane.kubectl("create", "namespace", NS, check=False)
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=render(control_plane, *options))
    kinds = {line.split("/")[0] for line in out.stdout.splitlines()}
    assert {"deployment.apps", "daemonset.apps", "validatingadmissionpolicy.admissionregistration.k8s.io",
            "validatingwebhookconfiguration.admissionregistration.k8s.io", "mutatingwebhookconfiguration.admissionregistration.k8s.io",
            "job.batch"} <= kinds
    if options:
        assert {"servicemonitor.monitoring.coreos.com", "podmonitor.monitoring.coreos.com", "prometheusrule.monitoring.coreos.com",
                "certificate.cert-manager.io", "issuer.cert-manager.io"} <= kinds


def test_safe_defaults_in_the_rendered_pods(control_plane: ControlPlane) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs(render(control_plane))}
    agent = docs[("DaemonSet", f"{RELEASE}-agent")]["spec"]["template"]["spec"]
    container = agent["containers"][0]
    assert container["resources"]["limits"]["devices.kubevirt.io/kvm"] == "1"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert agent["securityContext"]["runAsNonRoot"] is True and not agent.get("hostNetwork") and not agent.get("hostPID")
    assert agent["nodeSelector"] == {"kubernetes.io/arch": "arm64"} and "volumes" not in agent
    operator = docs[("Deployment", f"{RELEASE}-operator")]["spec"]
    assert operator["replicas"] == 1 and operator["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    hook = docs[("ValidatingWebhookConfiguration", f"{RELEASE}-cpumodels")]["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore" and hook["clientConfig"]["service"]["path"] == "/validate-cpumodel"
    mutate = docs[("MutatingWebhookConfiguration", f"{RELEASE}-virtualmachines")]["webhooks"][0]
    assert mutate["failurePolicy"] == "Ignore" and mutate["clientConfig"]["service"]["path"] == "/mutate-vm"
    pods = docs[("MutatingWebhookConfiguration", f"{RELEASE}-launcher-pods")]["webhooks"][0]
    assert pods["failurePolicy"] == "Ignore" and pods["clientConfig"]["service"]["path"] == "/mutate-launcher-pod"
    assert pods["objectSelector"] == {"matchLabels": {"kubevirt.io": "virt-launcher"}}, "only virt-launcher pods reach the operator"
    assert pods["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}]
    args = operator["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--vmm-") for a in args), "by default the QEMU is a released one: no SYSREG, no impl-cpu"
    secret = docs[("Secret", f"{RELEASE}-webhook-tls")]["data"]
    assert hook["clientConfig"]["caBundle"] == secret["ca.crt"], "the caBundle is the CA that signed the served certificate"


def test_install_upgrade_keeps_the_certificate(control_plane: ControlPlane, admin: Kube, installed: None, thirdparty_crds: None) -> None:
    assert admin.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{RELEASE}-operator")
    assert admin.get(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{RELEASE}-agent")
    before = admin.get(f"/api/v1/namespaces/{NS}/secrets/{RELEASE}-webhook-tls")["data"]["tls.crt"]
    control_plane.helm("upgrade", RELEASE, CHART, "--namespace", NS, "--set", "monitoring.prometheusRule=true")
    after = admin.get(f"/api/v1/namespaces/{NS}/secrets/{RELEASE}-webhook-tls")["data"]["tls.crt"]
    assert before == after, "an upgrade reuses the webhook certificate (no restart, no caBundle churn)"
    assert admin.get(f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/prometheusrules/{RELEASE}")


def _token(admin: Kube, account: str, pod: dict[str, Any] | None = None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
    review = admin.create(f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    token: str = review["status"]["token"]
    return token


def _granted(plane: ControlPlane, template: str) -> set[tuple[str, str, str]]:
    out = set()
    for doc in _docs(plane.helm("template", RELEASE, CHART, "--namespace", NS, *KUBE_VERSION, "--show-only", template)):
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            out.add((group, resource, verb))
    return out


def _used(plane: ControlPlane, mark: int, user: str) -> tuple[set[tuple[str, str, str]], list[dict[str, Any]]]:
    used, refused = set(), []
    for event in plane.requests_since(mark, user):
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        if event["responseStatus"]["code"] == 403:
            refused.append(event)
        else:
            used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used, refused


def _left_by_deleted_models(admin: Kube) -> list[str]:
    existing = {m["metadata"]["name"] for m in admin.get("/apis/armcpu.io/v1alpha1/cpumodels")["items"]}
    return [f"{n['metadata']['name']}: {k}" for n in admin.get("/api/v1/nodes")["items"] for k in n["metadata"].get("labels") or {}
            if (model := labels.model_of_key(k)) is not None and model not in existing]


def test_operator_rbac_is_enough_and_all_used(control_plane: ControlPlane, admin: Kube, installed: None) -> None:
    account = f"{RELEASE}-operator"
    user = f"system:serviceaccount:{NS}:{account}"
    kubeconfig = control_plane.kubeconfig_with_token("operator-sa", _token(admin, account))
    add_node(admin, "chart-op-a", {"pool": "chart-op"}, G4)
    add_node(admin, "chart-op-b", {"pool": "chart-op"}, G3)  # two CPUs: the model lowers fields, the domain hook is needed
    control_plane.kubectl("create", "namespace", "chart-hook", check=False)
    mark = control_plane.audit_mark()
    leftovers = _left_by_deleted_models(admin)
    with running_operator(control_plane, identity="chart-op", webhook=False, kubeconfig=kubeconfig, namespace=NS,
                          extra=("--lease-name", account, "--vm-webhook-configuration", f"{RELEASE}-virtualmachines")) as operator:
        # At start the operator removes what deleted CpuModels left (earlier tests leave such labels), and with
        # it hook ConfigMaps no VM needs: let that finish before planting one for this test.
        if leftovers:
            wait_for(lambda: "removed what a deleted cpumodel left" in operator.logs(), 30, "the operator's start-up garbage collection")
        # a stale copy of armcpu's own hook ConfigMap (as an older operator version left it): rewritten, not duplicated
        stale = hooks.configmap("default", "#!/usr/bin/env python3\n# armcpu 0.0 hook\n")
        admin.create("/api/v1/namespaces/default/configmaps", stale)
        for namespace in ("default", "chart-hook"):
            control_plane.kubectl("apply", "-f", "-", input=VM.format(name="chart-vm", app="chart-op", namespace=namespace))
        admin.create("/apis/armcpu.io/v1alpha1/cpumodels", {
            "apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "chart-op"},
            "spec": {"nodeSelector": {"matchLabels": {"pool": "chart-op"}}, "vmSelector": {"matchLabels": {"app": "chart-op"}},
                     "enforcement": "HookSidecar"},
        })
        wait_for(lambda: admin.get("/api/v1/nodes/chart-op-a")["metadata"]["labels"].get("cpumodel.armcpu.io/chart-op") == "1", 30, "labelled")
        vm_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/chart-vm"
        wait_for(lambda: (admin.get(vm_path)["spec"]["template"]["spec"].get("nodeSelector") or {}).get("cpumodel.armcpu.io/chart-op") == "1",
                 30, "VM patched")
        for namespace in ("default", "chart-hook"):
            path = f"/api/v1/namespaces/{namespace}/configmaps/{vms.HOOK_CONFIGMAP}"
            wait_for(lambda path=path: (admin.get_or_none(path) or {}).get("data") == {vms.HOOK_KEY: hookmaps.SCRIPT}, 30, "hook ConfigMap")
        admin.delete("/apis/armcpu.io/v1alpha1/cpumodels/chart-op")
        wait_for(lambda: admin.get_or_none("/apis/armcpu.io/v1alpha1/cpumodels/chart-op") is None, 30, "deleted")
        for namespace in ("default", "chart-hook"):
            path = f"/api/v1/namespaces/{namespace}/configmaps/{vms.HOOK_CONFIGMAP}"
            wait_for(lambda path=path: admin.get_or_none(path) is None, 30, "hook ConfigMap removed with its last VM")
        wait_for(lambda: ("coordination.k8s.io", "leases", "update") in _used(control_plane, mark, user)[0], 15, "a Lease renewal")
        operator_kube = Kube(load_kubeconfig(kubeconfig))
        with pytest.raises(ApiError) as denied:
            operator_kube.delete("/api/v1/nodes/chart-op-a")
        assert denied.value.status == 403
        with pytest.raises(ApiError) as secret:
            operator_kube.get(f"/api/v1/namespaces/{NS}/secrets")
        assert secret.value.status == 403
    used, refused = _used(control_plane, mark, user)
    assert [(e["verb"], e["objectRef"]) for e in refused if e["verb"] not in ("delete",) and e["objectRef"].get("resource") != "secrets"] == []
    granted = _granted(control_plane, "templates/operator-rbac.yaml")
    assert len(granted) == 24
    assert granted - used == set(), f"granted but never used: {sorted(granted - used)}"
    assert "cpumodel.armcpu.io/chart-op" not in admin.get("/api/v1/nodes/chart-op-a")["metadata"]["labels"]


def test_agent_rbac_and_policy_with_a_pod_bound_token(control_plane: ControlPlane, admin: Kube, installed: None) -> None:
    user = f"system:serviceaccount:{NS}:armcpu-agent"
    add_node(admin, "chart-ag-a", {"team": "x"}, None)
    add_node(admin, "chart-ag-b", {"team": "y"}, None)
    pod = admin.create(f"/api/v1/namespaces/{NS}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-on-a"},
        "spec": {"nodeName": "chart-ag-a", "serviceAccountName": "armcpu-agent", "containers": [{"name": "agent", "image": "armcpu"}]}})
    kube = Kube(load_kubeconfig(control_plane.kubeconfig_with_token("agent-sa", _token(admin, "armcpu-agent", pod))))
    mark = control_plane.audit_mark()
    assert publish(kube, "chart-ag-a", make_profile("chart-ag-a", G4)).profile_written == "created"
    assert publish(kube, "chart-ag-a", make_profile("chart-ag-a", G3)).profile_written == "updated"
    assert admin.get("/api/v1/nodes/chart-ag-a")["metadata"]["labels"]["armcpu.io/cpu"] == "arm-neoverse-v1"
    deadline = time.monotonic() + 30
    while True:  # the policy may need a moment after install
        try:
            kube.merge_patch("/api/v1/nodes/chart-ag-b", {"metadata": {"labels": {"armcpu.io/cpu": "x"}}})
        except ApiError as exc:
            assert exc.status == 403 and "may not change node chart-ag-b" in exc.message
            break
        assert time.monotonic() < deadline, "the agent labelled another node"
        time.sleep(0.5)
    with pytest.raises(ApiError, match=r"may change only armcpu\.io/ and feature\.armcpu\.io/ labels"):
        kube.merge_patch("/api/v1/nodes/chart-ag-a", {"metadata": {"labels": {"team": "z"}}})
    with pytest.raises(ApiError) as listing:
        kube.get("/api/v1/nodes")
    assert listing.value.status == 403
    # the verifier's read-only view of the CpuModels: one LIST, then a WATCH
    stop = threading.Event()
    watched = CpuModels(kube, lambda: None, stop, watch_seconds=1)  # the audit log records a watch when it ends
    watched.start()
    assert watched.synced.wait(30), "the agent could not list CpuModels"
    time.sleep(3.0)
    stop.set()
    used, _ = _used(control_plane, mark, user)
    granted = _granted(control_plane, "templates/agent-rbac.yaml")
    assert granted == {("", "nodes", "get"), ("", "nodes", "patch"), ("armcpu.io", "nodecpuprofiles", "get"),
                       ("armcpu.io", "nodecpuprofiles", "create"), ("armcpu.io", "nodecpuprofiles", "update"),
                       ("armcpu.io", "cpumodels", "list"), ("armcpu.io", "cpumodels", "watch")}
    assert granted - used == set(), f"granted but never used: {sorted(granted - used)}"


def test_cleanup_hook_removes_only_armcpu_labels(control_plane: ControlPlane, admin: Kube, installed: None) -> None:
    """The hook Job's own command and arguments, with its service account; no kubelet runs the Job here
    (tests/node does, on a real node, during a real uninstall). Runs last on the release: it stops it."""
    rendered = _docs(control_plane.helm("template", RELEASE, CHART, "--namespace", NS, *KUBE_VERSION,
                                        "--show-only", "templates/cleanup-hook.yaml"))
    hook = [d for d in rendered if d["kind"] != "Job"]
    [job] = [d["spec"]["template"]["spec"]["containers"][0] for d in rendered if d["kind"] == "Job"]
    assert job["command"][:2] == ["armcpu-operator", "cleanup"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(hook))
    add_node(admin, "chart-clean", {"team": "keep", "armcpu.io/cpu": "x", "feature.armcpu.io/FEAT_SVE": "true",
                                    "cpumodel.armcpu.io/m": "3", "kubevirt.io/schedulable": "true"}, None)
    control_plane.kubectl("apply", "-f", "-", input=VM.format(name="chart-clean-vm", app="clean", namespace="default"))
    vm_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/chart-clean-vm"
    original = admin.get(vm_path)
    admin.json_patch(vm_path, vms.patch(original, vms.Desired("m", 3, "f", ("sve",))))
    assert vms.uses(admin.get(vm_path)) == "m"
    kubeconfig = control_plane.kubeconfig_with_token("cleanup-sa", _token(admin, f"{RELEASE}-cleanup"))
    for namespace in ("chart-clean-unused", "chart-clean-running"):
        control_plane.kubectl("create", "namespace", namespace, check=False)
        admin.create(f"/api/v1/namespaces/{namespace}/configmaps", hooks.configmap(namespace, hookmaps.SCRIPT))
    control_plane.kubectl("apply", "-f", "-", input=RUNNING_HOOKED_VMI)
    mark = control_plane.audit_mark()
    for _ in range(2):  # idempotent
        run = subprocess.run([sys.executable, "-m", "armcpu_operator", *job["command"][1:], *job["args"], "--kubeconfig", str(kubeconfig)],
                             capture_output=True, text=True, check=False, cwd=REPO, timeout=60)
        assert run.returncode == 0, run.stderr
    assert admin.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{RELEASE}-operator")["spec"]["replicas"] == 0
    agents = admin.get(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{RELEASE}-agent")["spec"]["template"]["spec"]["nodeSelector"]
    assert agents["armcpu.io/uninstalling"] == "true", agents  # merged into the chart's own selector: no node matches
    assert admin.get_or_none(f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{RELEASE}-cpumodels") is None
    labels = admin.get("/api/v1/nodes/chart-clean")["metadata"]["labels"]
    assert not any(k.startswith(("armcpu.io/", "feature.armcpu.io/", "cpumodel.armcpu.io/")) for k in labels)
    assert labels["team"] == "keep" and labels["kubevirt.io/schedulable"] == "true"
    restored = admin.get(vm_path)
    assert restored["spec"] == original["spec"] and restored["metadata"].get("annotations") == original["metadata"].get("annotations")
    assert admin.get_or_none(hookmaps.path("chart-clean-unused")) is None
    assert admin.get_or_none(hookmaps.path("chart-clean-running")) is not None, "a running VM started with the hook still needs it"
    used, refused = _used(control_plane, mark, f"system:serviceaccount:{NS}:{RELEASE}-cleanup")
    assert refused == [] and used == _granted(control_plane, "templates/cleanup-hook.yaml")
    writes = control_plane.writes_since(mark, f"system:serviceaccount:{NS}:{RELEASE}-cleanup")
    assert {w["objectRef"]["name"] for w in writes} >= {"chart-clean"} and len([w for w in writes if w["objectRef"]["name"] == "chart-clean"]) == 1


def test_install_with_every_option_on_then_uninstall_keeps_crds(control_plane: ControlPlane, admin: Kube, thirdparty_crds: None) -> None:
    control_plane.helm("install", "armcpu-gone", CHART, "--namespace", "armcpu-gone", "--create-namespace", *ALL_ON)
    for path in ("/apis/monitoring.coreos.com/v1/namespaces/armcpu-gone/servicemonitors/armcpu-gone-operator",
                 "/apis/monitoring.coreos.com/v1/namespaces/armcpu-gone/podmonitors/armcpu-gone-agent",
                 "/apis/monitoring.coreos.com/v1/namespaces/armcpu-gone/prometheusrules/armcpu-gone",
                 "/apis/cert-manager.io/v1/namespaces/armcpu-gone/certificates/armcpu-gone-webhook-tls",
                 "/apis/cert-manager.io/v1/namespaces/armcpu-gone/issuers/armcpu-gone-selfsigned"):
        assert admin.get(path)
    hook = admin.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/armcpu-gone-cpumodels")
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "armcpu-gone/armcpu-gone-webhook-tls"
    control_plane.helm("uninstall", "armcpu-gone", "--namespace", "armcpu-gone", "--no-hooks")
    assert admin.get_or_none("/apis/monitoring.coreos.com/v1/namespaces/armcpu-gone/prometheusrules/armcpu-gone") is None
    assert admin.get_or_none("/apis/apps/v1/namespaces/armcpu-gone/deployments/armcpu-gone-operator") is None
    assert admin.get_or_none("/apis/rbac.authorization.k8s.io/v1/clusterroles/armcpu-gone-operator") is None
    for crd in ("cpumodels.armcpu.io", "nodecpuprofiles.armcpu.io"):
        assert admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
