"""A real Kubernetes node beside the local control plane, so the chart's pods really run.

Every part is the real one: containerd (Debian's) runs pods with runc, Debian's CNI plugins give them
a bridge network, the kubelet (built from the pinned k8s.io/kubernetes by ``scripts/build-tools.sh
node``) runs their probes, volumes and security contexts, kube-proxy (iptables mode) turns Services
into the rules the API server's webhook calls and the pods' API calls go through, and
kube-controller-manager turns Deployments, DaemonSets and Jobs into pods and makes the service
accounts, tokens and root-CA ConfigMaps pods need. Images come from ``scripts/build-image.sh`` and
are imported into containerd: no registry is involved.

What this machine needs, and how it is met (docs/development.md, "The real-node tier"):

- root, for containerd, the kubelet's mounts and cgroups, CNI and iptables;
- a cgroup hierarchy: the kubelet runs with ``failCgroupV1: false`` on a v1 or hybrid layout (this
  machine's), and under a cgroup root of its own, so stopping the node kills exactly its pods;
- an IPv4 address other than loopback: a kubelet refuses a loopback node IP, and pods reach the API
  server at it (through the ``kubernetes`` Service).

``unavailable()`` says which of these is missing, for a test to skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from armcpu_testing import processes
from armcpu_testing.controlplane import (
    KUBERNETES_SERVICE_IP,
    REPO,
    SERVICE_CIDR,
    ControlPlane,
    ControlPlaneError,
    free_port,
)

POD_CIDR = "10.244.0.0/24"
BRIDGE = "armcpu-cni0"
CNI_BIN = Path("/usr/lib/cni")
NODE_TOOLS = ("kubelet", "kube-controller-manager", "kube-proxy")
# Machine-wide settings the node changes: the kubelet's kernel tunables (it sets them unless
# protectKernelDefaults), kube-proxy's route_localnet, and the CNI bridge's ip_forward. Put back at stop.
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
           "kernel/keys/root_maxbytes", "net/ipv4/conf/all/route_localnet", "net/ipv4/ip_forward")


class NodeError(ControlPlaneError):
    pass


def node_ip() -> str | None:
    """This machine's first global IPv4 address: what the kubelet registers and pods dial."""
    if shutil.which("ip") is None:
        return None
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    return None


def unavailable() -> str | None:
    """Why a real node cannot run here (the reason a test skips with), or None."""
    if os.uname().sysname != "Linux":
        return "a real node needs Linux"
    if os.geteuid() != 0:
        return "a real node needs root (containerd, the kubelet's mounts and cgroups, CNI, iptables)"
    if not _cgroup_mounts():
        return "no cgroup filesystem is mounted under /sys/fs/cgroup"
    if node_ip() is None:
        return "no global IPv4 address: the kubelet refuses a loopback node IP"
    if shutil.which("apt-get") is None and not all(shutil.which(b) for b in ("containerd", "runc", "iptables")):
        return "containerd, runc and iptables are missing and there is no apt-get to install them"
    return None


@dataclass(frozen=True)
class Images:
    """The images ``scripts/build-image.sh`` built: names, and the archives containerd imports."""

    armcpu: str
    armcpu_archive: Path
    pause: str
    pause_archive: Path

    @property
    def repository(self) -> str:
        return self.armcpu.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.armcpu.rsplit(":", 1)[1]


@dataclass(frozen=True)
class Prepared:
    tools: Path
    images: Images


def prepare() -> Prepared:
    """Install the node's Debian packages, build the node's binaries and the images (all cached):
    ``scripts/setup-node.sh``. Its KEY=VALUE lines say where everything is."""
    proc = subprocess.run(["bash", str(REPO / "scripts/setup-node.sh")], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"scripts/setup-node.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    images = Images(values["ARMCPU_IMAGE"], Path(values["ARMCPU_IMAGE_ARCHIVE"]),
                    values["ARMCPU_PAUSE_IMAGE"], Path(values["ARMCPU_PAUSE_ARCHIVE"]))
    return Prepared(Path(values["ARMCPU_TOOLS_DIR"]), images)


def _cgroup_mounts() -> list[Path]:
    """Every cgroup (v1) or cgroup2 mount point, from /proc/self/mountinfo."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            before, _, after = line.partition(" - ")
            if after.split()[:1] in (["cgroup"], ["cgroup2"]):
                mounts.append(Path(before.split()[4]))
    return mounts


@dataclass
class RealNode:
    """containerd + kubelet + kube-proxy + kube-controller-manager for ``plane`` (started with
    ``node_ip``). Use :func:`running_node`, which always stops everything and leaves no mount,
    process, cgroup, iptables rule or bridge behind."""

    plane: ControlPlane
    images: Images
    name: str = "armcpu-node"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cgroup_root: str = field(default_factory=lambda: f"armcpu-{uuid.uuid4().hex[:8]}")
    netns_before: frozenset[str] = frozenset()
    chains_before: frozenset[tuple[str, str, str]] = frozenset()
    sysctls_before: dict[str, str] = field(default_factory=dict)
    added_route: bool = False

    @property
    def workdir(self) -> Path:
        return self.plane.workdir / "node"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def start(self, timeout: float = 180.0) -> None:
        assert self.plane.node_ip is not None, "start the control plane with node_ip"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns_before = frozenset(_netns())
        self.chains_before = frozenset(_chains())
        self.sysctls_before = {key: value for key in SYSCTLS if (value := _sysctl(key)) is not None}
        self._make_cgroup_root()
        self._write_cni()
        self._start_containerd()
        for archive in (self.images.pause_archive, self.images.armcpu_archive):
            self.ctr("images", "import", str(archive))
        self.plane.start_scheduler()
        self._start_controller_manager()
        self._start_kube_proxy()
        self._start_kubelet()
        self._wait_ready(timeout)

    # --- containerd ----------------------------------------------------------------------------

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        config = base / "config.toml"
        config.write_text(f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{base / 'ttrpc.sock'}"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images.pause}"
  # Root here lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj: the CRI's -998 for a
  # sandbox (and the kubelet's -997 for a Guaranteed pod) stop at containerd's own value instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.workdir / 'cni' / 'net.d'}"
""")
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait(lambda: self.containerd_socket.exists() and self.ctr("version", check=False).returncode == 0,
                   60.0, "containerd")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Debian's ``ctr`` against this node's containerd, in the CRI's namespace."""
        proc = subprocess.run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, check=False, timeout=300)
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {proc.stderr}")
        return proc

    def _write_cni(self) -> None:
        conf = self.workdir / "cni" / "net.d"
        conf.mkdir(parents=True, exist_ok=True)
        bridge = {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                  "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}],
                           "dataDir": str(self.workdir / "cni" / "ipam")}}
        (conf / "10-armcpu.conflist").write_text(json.dumps(
            {"cniVersion": "0.4.0", "name": "armcpu", "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}]},
            indent=1))

    # --- the Kubernetes parts ------------------------------------------------------------------

    def _start_controller_manager(self) -> None:
        kubeconfig = self.plane.kubeconfig_for("system:kube-controller-manager", group=None)
        pki = self.plane.workdir / "pki"
        self._spawn("kube-controller-manager", [
            self.plane.binary("kube-controller-manager"),
            "--kubeconfig", str(kubeconfig),
            "--authentication-kubeconfig", str(kubeconfig),
            "--authorization-kubeconfig", str(kubeconfig),
            "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"),
            "--leader-elect=false",
            "--bind-address", "127.0.0.1",
            "--secure-port", str(free_port()),
            "--v", "1",
        ])

    def _start_kube_proxy(self) -> None:
        kubeconfig = self.plane.kubeconfig_for("system:kube-proxy", group=None)
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {self.name}
mode: iptables
clusterCIDR: {POD_CIDR}
healthzBindAddress: 127.0.0.1:{free_port()}
metricsBindAddress: 127.0.0.1:{free_port()}
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
""")
        self._spawn("kube-proxy", [self.plane.binary("kube-proxy"), "--config", str(config), "--v", "1"])
        # The API server dials a webhook Service's ClusterIP; without a route to the Service range
        # the kernel refuses the connection before kube-proxy's rules see it.
        if subprocess.run(["ip", "route", "get", KUBERNETES_SERVICE_IP], capture_output=True, check=False).returncode != 0:
            subprocess.run(["ip", "route", "add", SERVICE_CIDR, "dev", "lo"], check=True)
            self.added_route = True

    def _start_kubelet(self) -> None:
        assert self.plane.ca is not None and self.plane.node_ip is not None
        pki = self.workdir / "kubelet-pki"
        crt, key = self.plane.ca.write(pki, "kubelet", self.name, server=True, sans=(self.plane.node_ip, self.name))
        kubeconfig = self.plane.kubeconfig_for(f"system:node:{self.name}", group="system:nodes")
        config = self.workdir / "kubelet.yaml"
        config.write_text(f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine's cgroups are v1 (a hybrid layout): kubelet 1.35 refuses them unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{self.cgroup_root}
containerRuntimeEndpoint: unix://{self.containerd_socket}
address: {self.plane.node_ip}
port: {free_port()}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {free_port()}
tlsCertFile: {crt}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {self.plane.workdir / 'pki' / 'ca.crt'}}}
authorization:
  mode: Webhook
failSwapOn: false
oomScoreAdj: 0  # not -999: root here lacks CAP_SYS_RESOURCE
resolvConf: /etc/resolv.conf
podLogsDir: {self.workdir / 'pod-logs'}
serializeImagePulls: false
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
""")
        self._spawn("kubelet", [
            self.plane.binary("kubelet"),
            "--config", str(config),
            "--kubeconfig", str(kubeconfig),
            "--hostname-override", self.name,
            "--node-ip", self.plane.node_ip,
            "--root-dir", str(self.workdir / "kubelet"),
            "--cert-dir", str(pki),
            "--v", "1",
        ])

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            proc = self.plane.kubectl("get", "node", self.name, "-o", "json", check=False)
            if proc.returncode != 0:
                return False
            conditions = json.loads(proc.stdout)["status"].get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        self._wait(ready, timeout, f"Node {self.name} Ready")

    # --- processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        self.processes[name] = processes.spawn(args, self.workdir / f"{name}.log")

    def _wait(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise NodeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{self.logs(name)}")
            if done():
                return
            time.sleep(0.5)
        raise NodeError(f"{what}: not after {timeout:.0f}s\n{self.logs()}")

    def logs(self, *names: str, lines: int = 25) -> str:
        out = []
        for name in names or tuple(self.processes):
            path = self.workdir / f"{name}.log"
            if path.exists():
                out.append(f"--- {name} (last lines)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # --- cgroups -------------------------------------------------------------------------------

    def _cgroup_dirs(self) -> list[Path]:
        return [mount / self.cgroup_root for mount in _cgroup_mounts()]

    def _make_cgroup_root(self) -> None:
        """The kubelet's cgroup root must exist in every hierarchy; cpuset needs its CPUs and memory
        nodes before a process may join."""
        for directory in self._cgroup_dirs():
            directory.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (directory / name).exists() and not (directory / name).read_text().strip():
                    (directory / name).write_text((directory.parent / name).read_text())

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for directory in self._cgroup_dirs():
            for procs in directory.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _shim_pids(self) -> set[int]:
        """containerd's shims outlive containerd; they carry its socket in their command line."""
        pids = set()
        needle = str(self.containerd_socket).encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"containerd-shim" in cmdline and needle in cmdline:
                        pids.add(int(proc.name))
        return pids

    # --- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything this node started and remove what it left on the machine."""
        for name in ("kubelet", "kube-proxy", "kube-controller-manager"):
            self._terminate(name)
        for _ in range(50):  # the pods: every process under the kubelet's cgroup root, then the shims
            pids = self._cgroup_pids() | self._shim_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        self._terminate("containerd")
        self._unmount()
        _remove_links(Path("/var/log/containers"), self.workdir)  # the kubelet links every container's log there
        for directory in sorted(self._cgroup_dirs(), reverse=True):
            for child in sorted(directory.rglob("*/"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                directory.rmdir()
        if Path(self.plane.binary("kube-proxy")).exists():
            subprocess.run([self.plane.binary("kube-proxy"), "--cleanup"], capture_output=True, check=False, timeout=60)
        _remove_chains(set(_chains()) - self.chains_before)  # the kubelet's own (KUBE-FIREWALL, its canaries)
        if self.added_route:
            subprocess.run(["ip", "route", "del", SERVICE_CIDR, "dev", "lo"], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for key, value in self.sysctls_before.items():
            if _sysctl(key) != value:
                with contextlib.suppress(OSError):
                    (Path("/proc/sys") / key).write_text(value + "\n")

    def leftovers(self) -> list[str]:
        """What of the node is still on the machine after :meth:`stop` (empty when it cleaned up)."""
        found = [f"process {pid}" for pid in sorted(self._cgroup_pids() | self._shim_pids())]
        found += [f"cgroup {d}" for d in self._cgroup_dirs() if d.exists()]
        found += [f"mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(self.workdir))]
        found += [f"network namespace {n}" for n in sorted(set(_netns()) - self.netns_before)]
        found += [f"iptables chain {c}" for c in sorted(set(_chains()) - self.chains_before)]
        found += [f"sysctl {k}={_sysctl(k)} (was {v})" for k, v in self.sysctls_before.items() if _sysctl(k) != v]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"bridge {BRIDGE}")
        with contextlib.suppress(OSError):
            found += [f"log link {link}" for link in Path("/var/log/containers").iterdir()
                      if link.is_symlink() and os.readlink(link).startswith(str(self.workdir))]
        return found

    def _terminate(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is not None:
            processes.stop_groups([proc], timeout=20)

    def _unmount(self) -> None:
        """Lazily unmount what the kubelet and containerd mounted (volumes, root filesystems, shm,
        the pods' network namespaces), deepest first, and remove the namespaces' files."""
        prefix = str(self.workdir)
        new_netns = {f"/run/netns/{n}" for n in set(_netns()) - self.netns_before}
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(prefix) or point in new_netns or point.replace("/var/run/", "/run/", 1) in new_netns:
                points.append(point)
        for point in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        for path in new_netns:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _chains() -> list[tuple[str, str, str]]:
    """(command, table, chain) of every iptables and ip6tables chain."""
    found = []
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([command, "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
            found += [(command, table, line.split()[1]) for line in out.splitlines() if line.startswith("-N ")]
    return found


def _remove_chains(chains: set[tuple[str, str, str]]) -> None:
    """Delete every rule that jumps to these chains, then the chains."""
    for command, table in {(c, t) for c, t, _ in chains}:
        names = {name for c, t, name in chains if (c, t) == (command, table)}
        rules = subprocess.run([command, "-t", table, "-S"], capture_output=True, text=True, check=False).stdout.splitlines()
        for rule in rules:
            words = rule.split()
            if words[:1] == ["-A"] and "-j" in words and words[words.index("-j") + 1] in names and words[1] not in names:
                subprocess.run([command, "-t", table, "-D", *words[1:]], capture_output=True, check=False)
        for name in names:
            subprocess.run([command, "-t", table, "-F", name], capture_output=True, check=False)
        for name in names:
            subprocess.run([command, "-t", table, "-X", name], capture_output=True, check=False)


def _remove_links(directory: Path, target_prefix: Path) -> None:
    with contextlib.suppress(OSError):
        for link in directory.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(target_prefix)):
                    link.unlink()


def _sysctl(key: str) -> str | None:
    with contextlib.suppress(OSError):
        return (Path("/proc/sys") / key).read_text().strip()
    return None


def _netns() -> list[str]:
    with contextlib.suppress(OSError):
        return os.listdir("/run/netns")
    return []


@contextlib.contextmanager
def running_node(plane: ControlPlane, images: Images, name: str = "armcpu-node") -> Iterator[RealNode]:
    """Start a node for ``plane``; always stop it, and fail if it left anything behind."""
    node = RealNode(plane, images, name=name)
    try:
        node.start()
        yield node
    finally:
        node.stop()
    left = node.leftovers()
    if left:
        raise NodeError("the node left on this machine: " + "; ".join(left))
