"""The image scripts/build-image.sh built, run by the real kubelet with the chart's own security
context: every console script starts as the non-root user, on a read-only root filesystem."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from armcpu_testing.waiting import wait_for
from tests.node.conftest import Cluster

pytestmark = pytest.mark.node

CHART = "charts/armcpu"
SCRIPTS = ("armcpu", "armcpu-agent", "armcpu-operator", "kubectl-armcpu")
# Run inside the image: who the process is, and what writing to / and to /tmp does.
WHOAMI = """
import errno, json, os
def write(path):
    try:
        open(path, "w").close()
        return "written"
    except OSError as exc:
        return errno.errorcode[exc.errno]
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "root": write("/probe"), "tmp": write("/tmp/probe")}))
"""


def _chart_security(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operator pod's and container's securityContext, as the chart renders them."""
    from armcpu_testing.controlplane import REPO

    rendered = cluster.plane.helm("template", "armcpu", str(REPO / CHART), "--kube-version", "1.35.4",
                                "--show-only", "templates/operator.yaml")
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod["securityContext"], pod["containers"][0]["securityContext"]


def test_every_console_script_starts_as_nonroot_on_a_read_only_root(cluster: Cluster) -> None:
    pod_security, container_security = _chart_security(cluster)
    assert pod_security["runAsNonRoot"] is True and container_security["readOnlyRootFilesystem"] is True
    containers = [{"name": script, "image": cluster.images.armcpu, "imagePullPolicy": "Never", "command": [script, "--help"],
                   "securityContext": container_security} for script in SCRIPTS]
    containers.append({"name": "whoami", "image": cluster.images.armcpu, "imagePullPolicy": "Never",
                       "command": ["python", "-c", WHOAMI], "securityContext": container_security})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "image-scripts", "namespace": "default"},
           "spec": {"restartPolicy": "Never", "securityContext": pod_security, "containers": containers}}
    wait_for(lambda: cluster.plane.kubectl("get", "serviceaccount", "default", check=False).returncode == 0, 60,
             "the default service account (kube-controller-manager makes it)")
    cluster.plane.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def finished() -> dict[str, Any] | None:
        got = json.loads(cluster.plane.kubectl("get", "pod", "image-scripts", "-o", "json").stdout)
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    done = wait_for(finished, 120, "the image's scripts to run")
    exits = {s["name"]: s["state"]["terminated"]["exitCode"] for s in done["status"]["containerStatuses"]}
    logs = {name: cluster.plane.kubectl("logs", "image-scripts", "-c", name).stdout for name in exits}
    assert exits == dict.fromkeys((*SCRIPTS, "whoami"), 0), logs
    assert done["status"]["phase"] == "Succeeded"
    for script in SCRIPTS:
        prog = "kubectl armcpu" if script == "kubectl-armcpu" else script
        assert logs[script].startswith(f"usage: {prog}"), logs[script]
    # /tmp is the image's WORKDIR but no emptyDir is mounted in this pod: read-only too.
    assert json.loads(logs["whoami"]) == {"uid": 65532, "gid": 65532, "root": "EROFS", "tmp": "EROFS"}
    cluster.plane.kubectl("delete", "pod", "image-scripts", "--wait=false")
