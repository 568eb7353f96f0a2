"""A real, local Kubernetes control plane: etcd + kube-apiserver on loopback, for tests and the demo.

Nothing is mocked: the binaries are the real ones, built from their Go modules by
``scripts/build-tools.sh``. The API server runs with RBAC, the default admission chain
(ValidatingAdmissionPolicy included), service-account token issuing and its own CA; an admin
kubeconfig (client certificate in ``system:masters``) is written to the temp dir. On start it
installs armcpu's CRDs (``crds/``) and KubeVirt's (``../shared/kubevirt/``).

``python -m armcpu_testing.controlplane`` starts one by hand and prints its kubeconfig path.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from armcpu_testing import processes
from armcpu_testing.signals import Stopped, stopping_on_signals, wait_until_stopped

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ARMCPU_SHARED", REPO.parent / "shared"))
KUBEVIRT_CRDS = SHARED / "kubevirt"
CPUS = REPO / "tests" / "fixtures" / "cpus"  # a copy of ../shared/cpus: unit tests and the demo need it without the sibling
ARMCPU_CRDS = REPO / "crds"


TOOLS = ("kube-apiserver", "kube-scheduler", "etcd", "kubectl", "helm")
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR, which the API server gives its Service


class ControlPlaneError(RuntimeError):
    pass


def tools_dir() -> Path:
    """Where kube-apiserver, kube-scheduler, etcd, kubectl and helm are; builds them on a cold machine."""
    if os.environ.get("ARMCPU_TOOLS_DIR") and all(
        (Path(os.environ["ARMCPU_TOOLS_DIR"]) / t).exists() for t in TOOLS
    ):
        return Path(os.environ["ARMCPU_TOOLS_DIR"])
    if shutil.which("go") is None:
        raise ControlPlaneError(
            "kube-apiserver/kube-scheduler/etcd/kubectl/helm are not built and Go is missing: install Go >= 1.25 "
            "and run scripts/build-tools.sh (it builds them from the Go module proxy)"
        )
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/build-tools.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"scripts/build-tools.sh failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass
class _CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> _CA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("armcpu-test-ca"))
            .issuer_name(_name("armcpu-test-ca"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, cn: str, org: str | None = None, server: bool = False,
              sans: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        """A key and a certificate for ``cn``; a server's names 127.0.0.1 and localhost, and ``sans``
        (IP addresses or DNS names)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(name) for name in ("localhost", "127.0.0.1", *sans)]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return (
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    def write(self, directory: Path, stem: str, cn: str, org: str | None = None, server: bool = False,
              sans: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """Issue a certificate and write ``<stem>.crt`` and ``<stem>.key`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        crt, key = self.issue(cn, org=org, server=server, sans=sans)
        (directory / f"{stem}.crt").write_bytes(crt)
        (directory / f"{stem}.key").write_bytes(key)
        return directory / f"{stem}.crt", directory / f"{stem}.key"


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver; use :func:`running` to get one that cleans up."""

    workdir: Path
    tools: Path
    api_port: int = 0
    etcd_port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ca: _CA | None = None
    commands: dict[str, list[str]] = field(default_factory=dict)
    # Set, the API server also serves kubelets and pods (armcpu_testing.node): it listens on this
    # address too, advertises it as the ``kubernetes`` Service's endpoint, authorizes kubelets with
    # the Node authorizer and NodeRestriction, and gives pods service-account tokens (the
    # ServiceAccount admission plugin, which needs kube-controller-manager's service accounts).
    node_ip: str | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def binary(self, name: str) -> str:
        return str(self.tools / name)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary("kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, input=input, check=False, timeout=120,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def kubeconfig_for(self, user: str, group: str | None = "system:masters") -> Path:
        """A kubeconfig with a client certificate for ``user`` (so the audit log tells its writes apart)."""
        assert self.ca is not None, "start() first"
        directory = self.workdir / "users" / user
        crt, key = self.ca.write(directory, "client", user, org=group)
        pki = self.workdir / "pki"
        text = self.kubeconfig.read_text().replace(str(pki / "admin.crt"), str(crt)).replace(str(pki / "admin.key"), str(key))
        path = directory / "kubeconfig"
        path.write_text(text)
        return path

    def serving_cert(self, name: str) -> tuple[Path, Path, Path]:
        """(cert, key, CA) files for a TLS server on 127.0.0.1 that the API server trusts via the CA."""
        assert self.ca is not None, "start() first"
        crt, key = self.ca.write(self.workdir / "serving" / name, "tls", name, server=True)
        return crt, key, self.workdir / "pki" / "ca.crt"

    def helm(self, *args: str) -> str:
        """Run the pinned helm against this control plane; returns stdout."""
        proc = subprocess.run(
            [self.binary("helm"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True, text=True, check=False, timeout=300,
        )
        if proc.returncode != 0:
            raise ControlPlaneError(f"helm {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def restart(self, names: tuple[str, ...] = ("etcd", "kube-apiserver"), kill: bool = True, down_seconds: float = 0.0) -> float:
        """Stop these processes (SIGKILL, or SIGTERM), keep them down ``down_seconds``, start them again
        on the same ports, data and certificates, and wait until the API server is ready; returns the
        seconds the API was unavailable."""
        start = time.monotonic()
        for name in [n for n in ("kube-apiserver", "etcd") if n in names]:  # the API server first: it drains against a live etcd
            for proc in [p for p in self.processes if p.args == self.commands[name]]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
                proc.wait(timeout=120)
                self.processes.remove(proc)
        time.sleep(down_seconds)
        for name in ("etcd", "kube-apiserver"):
            if name in names:
                self._spawn(name, self.commands[name])
        self._wait_ready(self.workdir / "pki", 90.0)
        return time.monotonic() - start

    def start_scheduler(self, timeout: float = 60.0) -> None:
        """Run the real kube-scheduler (the same pinned k8s.io/kubernetes) as ``system:kube-scheduler``,
        whose RBAC the API server bootstraps. It places pods on Nodes that say they are Ready (see
        :mod:`armcpu_testing.launcher`); no kubelet runs them. Idempotent."""
        if "kube-scheduler" in self.commands:
            return
        kubeconfig = self.kubeconfig_for("system:kube-scheduler", group=None)
        self.commands["kube-scheduler"] = [
            self.binary("kube-scheduler"),
            "--kubeconfig", str(kubeconfig),
            "--authentication-kubeconfig", str(kubeconfig),
            "--authorization-kubeconfig", str(kubeconfig),
            "--leader-elect=false",
            "--bind-address", "127.0.0.1",
            "--secure-port", str(free_port()),
            "--v", "1",
        ]
        proc = self._spawn("kube-scheduler", self.commands["kube-scheduler"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"kube-scheduler exited {proc.returncode}: {(self.workdir / 'kube-scheduler.log').read_text()[-3000:]}")
            if self._scheduler_serving():
                return
            time.sleep(0.5)
        raise ControlPlaneError(f"kube-scheduler not started after {timeout}s: {(self.workdir / 'kube-scheduler.log').read_text()[-3000:]}")

    def _scheduler_serving(self) -> bool:
        port = self.commands["kube-scheduler"][self.commands["kube-scheduler"].index("--secure-port") + 1]
        try:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = processes.spawn(args, self.workdir / f"{name}.log")
        self.processes.append(proc)
        return proc

    def start(self, timeout: float = 90.0) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True)
        ca = self.ca = _CA.create()
        (pki / "ca.crt").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        ca.write(pki, "apiserver", "kube-apiserver", server=True, sans=self._apiserver_names())
        ca.write(pki, "admin", "armcpu-admin", org="system:masters")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(
            sa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        )
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        self.etcd_port, peer_port, self.api_port = free_port(), free_port(), free_port()
        self.commands["etcd"] = [
            self.binary("etcd"),
            "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level", "warn",
        ]
        self.commands["kube-apiserver"] = [
            self.binary("kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
            "--secure-port", str(self.api_port),
            "--tls-cert-file", str(pki / "apiserver.crt"),
            "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--service-account-issuer", f"https://127.0.0.1:{self.api_port}",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--api-audiences", f"https://127.0.0.1:{self.api_port}",
            "--service-cluster-ip-range", SERVICE_CIDR,
            *self._node_serving_flags(pki),
            "--allow-privileged=true",
            "--cert-dir", str(pki),
            "--audit-policy-file", str(self._write_audit_policy()),
            "--audit-log-path", str(self.audit_log),
            "--audit-log-mode", "blocking",
            "--audit-log-format", "json",
            "--v", "1",
        ]
        for name in ("etcd", "kube-apiserver"):
            self._spawn(name, self.commands[name])
        self._write_kubeconfig(pki)
        self._wait_ready(pki, timeout)

    def _apiserver_names(self) -> tuple[str, ...]:
        """The API server's certificate names besides loopback: with a node, the address pods and
        kubelets dial, and the ``kubernetes`` Service's ClusterIP and DNS names that in-cluster
        clients verify."""
        if self.node_ip is None:
            return ()
        return (self.node_ip, KUBERNETES_SERVICE_IP, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local")

    def _node_serving_flags(self, pki: Path) -> list[str]:
        if self.node_ip is None:
            # No kube-controller-manager makes namespaces' service accounts: pods would be refused.
            return ["--bind-address", "127.0.0.1", "--authorization-mode", "RBAC", "--disable-admission-plugins", "ServiceAccount"]
        assert self.ca is not None
        crt, key = self.ca.write(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters")
        return [
            "--bind-address", "0.0.0.0",
            "--advertise-address", self.node_ip,
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction",
            "--kubelet-client-certificate", str(crt),
            "--kubelet-client-key", str(key),
            "--kubelet-preferred-address-types", "InternalIP",  # no DNS here resolves the node's name
        ]

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _write_audit_policy(self) -> Path:
        """Log every request (metadata only): tests count writes to prove a quiet reconcile, and
        list the requests a service account made to prove its RBAC is minimal."""
        path = self.workdir / "audit-policy.yaml"
        path.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
            "- level: Metadata\n"
        )
        return path

    def audit_mark(self) -> int:
        """A position in the audit log; pass it to :meth:`writes_since`."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def requests_since(self, mark: int, user: str | None = None) -> list[dict[str, Any]]:
        """Requests the API server completed after ``mark`` (optionally by one user name).

        The audit backend runs in blocking mode, so a request is in the log before its response
        reaches the client. The API server's own requests (its identity Lease every ~10 s, its
        informers) are left out.
        """
        with open(self.audit_log, "rb") as log:
            log.seek(mark)
            lines = log.read().decode().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        events = [e for e in events if e.get("stage") == "ResponseComplete" and e.get("user", {}).get("username") != "system:apiserver"]
        return [e for e in events if user is None or e.get("user", {}).get("username") == user]

    def writes_since(self, mark: int, user: str | None = None) -> list[dict[str, Any]]:
        """Write requests (create, update, patch, delete) completed after ``mark``."""
        writes = {"create", "update", "patch", "delete", "deletecollection"}
        return [e for e in self.requests_since(mark, user) if e.get("verb") in writes]

    def kubeconfig_with_token(self, name: str, token: str) -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. a service account's)."""
        directory = self.workdir / "users" / name
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "kubeconfig"
        path.write_text(
            f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {self.url}\n"
            f"    certificate-authority: {self.workdir / 'pki' / 'ca.crt'}\nusers:\n- name: u\n  user:\n    token: {token}\n"
            "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
        )
        return path

    def _write_kubeconfig(self, pki: Path) -> None:
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: armcpu-local
  cluster:
    server: {self.url}
    certificate-authority: {pki / "ca.crt"}
users:
- name: admin
  user:
    client-certificate: {pki / "admin.crt"}
    client-key: {pki / "admin.key"}
contexts:
- name: armcpu-local
  context: {{cluster: armcpu-local, user: admin}}
current-context: armcpu-local
"""
        )

    def _wait_ready(self, pki: Path, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{proc.args!r} exited with {proc.returncode}: {self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout}s ({last}): {self.logs()}")

    def logs(self) -> str:
        out = []
        for name in ("etcd", "kube-apiserver"):
            path = self.workdir / f"{name}.log"
            if path.exists():
                out.append(f"--- {name} (last lines)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(out)

    def install_crds(self) -> list[str]:
        """Apply KubeVirt's CRDs and armcpu's, and wait until the API server serves them."""
        files = sorted(KUBEVIRT_CRDS.glob("*-crd.yaml")) + sorted(ARMCPU_CRDS.glob("*.yaml"))
        if not any(KUBEVIRT_CRDS.glob("*-crd.yaml")):
            raise ControlPlaneError(f"KubeVirt CRDs not found in {KUBEVIRT_CRDS} (set ARMCPU_SHARED)")
        names = []
        for path in files:
            self.kubectl("apply", "--server-side", "--field-manager=armcpu-test", "-f", str(path))
            names.append(self.kubectl("get", "-f", str(path), "-o", "name").stdout.strip())
        for name in names:
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", name)
        return names

    def stop(self) -> None:
        processes.stop_groups(list(reversed(self.processes)), timeout=15)
        self.processes.clear()


@contextlib.contextmanager
def running(install_crds: bool = True, keep_dir: bool = False, node_ip: str | None = None,
            tools: Path | None = None) -> Iterator[ControlPlane]:
    """Start a control plane, yield it, and always stop every process and remove its temp dir."""
    workdir = Path(tempfile.mkdtemp(prefix="armcpu-cp-"))
    plane = ControlPlane(workdir=workdir, tools=tools or tools_dir(), node_ip=node_ip)
    try:
        plane.start()
        if install_crds:
            plane.install_crds()
        yield plane
    finally:
        plane.stop()
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m armcpu_testing.controlplane",
                                     description="Start a local kube-apiserver + etcd with armcpu's and KubeVirt's CRDs.")
    parser.add_argument("--check", action="store_true", help="start, show the served CRDs, stop")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        with stopping_on_signals(), running() as plane:
            print(f"control plane up in {time.monotonic() - start:.1f}s at {plane.url}")
            print(f"export KUBECONFIG={plane.kubeconfig}")
            print(plane.kubectl("get", "crds").stdout)
            if args.check:
                return 0
            wait_until_stopped("Ctrl-C or SIGTERM stops it and removes everything it started.")
    except Stopped as stopped:
        return 128 + stopped.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
