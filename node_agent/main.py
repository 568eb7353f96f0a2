"""``armcpu-agent``: probe this node's CPU, publish its NodeCpuProfile, label the node, repeat.

Runs as a DaemonSet: re-probes on start and every ``--interval`` seconds (a kernel or firmware
update changes the registers), backs off on errors, and stops cleanly on SIGTERM. ``--once``
prints the profile and exits without touching the cluster; it is also how users collect profiles
for ``armcpu baseline``. ``armcpu-agent verify --model FILE`` asks this node's kernel whether it
runs a model (:mod:`node_agent.verify_cmd`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from armcpu.profile import to_dict
from armcpu_k8s import logs, serving
from armcpu_k8s.kube import ApiError, ConfigError, Kube, load_credentials
from armcpu_k8s.resources import NODES
from node_agent import plan, verifier, verify_cmd
from node_agent.collect import NotArm64, Sources, collect
from node_agent.cpumodels import CpuModels
from node_agent.probes import ProbeError, kvm_replay, kvm_session
from node_agent.publish import NodeMissing, publish

log = logging.getLogger("armcpu.agent")


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.probe_seconds = Histogram("armcpu_agent_probe_duration_seconds", "Time to probe the CPU", registry=r,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.last_success = Gauge("armcpu_agent_last_success_timestamp_seconds", "End of the last cycle that published successfully", registry=r)
        self.errors = Counter("armcpu_agent_errors_total", "Failed cycles, by stage", ["stage"], registry=r)
        self.writes = Counter("armcpu_agent_api_writes_total", "Write requests sent to the API server", ["verb", "code"], registry=r)
        self.info = Gauge("armcpu_agent_profile_info", "The published profile (value 1)", ["probe", "fingerprint", "cpu"], registry=r)
        self.arm64 = Gauge("armcpu_agent_arm64", "1 on arm64 nodes, 0 where the agent idles", registry=r)
        self.verifications = Counter("armcpu_agent_verifications_total", "Models verified on this node's kernel, by verdict", ["result"],
                                     registry=r)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="armcpu-agent", description=__doc__.splitlines()[0])
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                   help="this node's name (default: $NODE_NAME, else the hostname)")
    p.add_argument("--host-root", type=Path, default=Path(os.environ.get("ARMCPU_HOST_ROOT", "/")),
                   help="where the host's /sys, /proc and /dev/kvm are (default /)")
    p.add_argument("--once", action="store_true", help="probe, print the profile, exit (no cluster access)")
    p.add_argument("-o", "--output", choices=("json", "yaml"), default="json", help="format for --once")
    p.add_argument("--interval", type=float, default=600.0, help="seconds between probes (default 600)")
    p.add_argument("--feature-labels", action="store_true", help="also label the node with one feature.armcpu.io/FEAT_x per feature")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, else in-cluster)")
    p.add_argument("--listen", default="0.0.0.0:9101", help="address:port for /metrics, /healthz, /readyz ('' disables)")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.add_argument("--kvm-record", type=Path, default=None, help="with --once: also write the KVM ioctl conversation to this file")
    p.add_argument("--kvm-replay", type=Path, default=None,
                   help="answer the KVM probe from a recorded conversation instead of /dev/kvm (on any architecture); a file "
                        "`armcpu-agent verify --kvm-record` wrote also answers the verifier for its model")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not verify the CpuModels of this node's pools on its kernel (the operator then reports the node pending "
                        "unless it runs with --kernel-verification Advisory)")
    p.add_argument("--machine", default=platform.machine(), help=argparse.SUPPRESS)  # tests: pretend another arch
    return p.parse_args(argv)


class Agent:
    def __init__(self, args: argparse.Namespace, kube: Kube, sources: Sources, metrics: Metrics,
                 checker: verifier.Verifier | None = None) -> None:
        self.args, self.kube, self.sources, self.metrics = args, kube, sources, metrics
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by stop and by a CpuModel change this node must verify
        self.ready = False
        self.heartbeat = time.monotonic()
        self.verifier = checker
        self.cpumodels = CpuModels(kube, self._cpumodels_changed, self.stop) if checker is not None else None
        self.node_labels: dict[str, str] = {}
        self.wanted: frozenset[str] = frozenset()

    def _cpumodels_changed(self) -> None:
        """From the watch thread: wake the loop only when the models this node must verify change."""
        assert self.cpumodels is not None
        keys = frozenset(t.key for t in plan.verification_targets(self.cpumodels.snapshot(), self.node_labels))
        if keys != self.wanted:
            self.wake.set()

    def _with_verdicts(self, profile: Any, node: dict[str, Any]) -> Any:
        self.node_labels = dict(node["metadata"].get("labels") or {})  # before the check: the watch compares with them
        if self.verifier is None or self.cpumodels is None or not self.cpumodels.synced.is_set():
            return profile
        targets = plan.verification_targets(self.cpumodels.snapshot(), self.node_labels)
        self.wanted = frozenset(t.key for t in targets)
        verdicts = self.verifier.verdicts(profile, targets)
        for v in self.verifier.fresh:
            self.metrics.verifications.labels("ok" if v.ok else "refused").inc()
        return replace(profile, verifications=verdicts)

    def cycle(self) -> bool:
        """One probe-and-publish; True on success. Never raises for expected failures."""
        self.heartbeat = time.monotonic()
        self.sources.skipped.clear()
        start = time.monotonic()
        try:
            profile = collect(self.args.node_name, self.sources)
        except ProbeError as exc:
            self.metrics.errors.labels("probe").inc()
            log.error("probe failed", extra={"error": str(exc)})
            return False
        finally:
            self.metrics.probe_seconds.observe(time.monotonic() - start)
        try:
            node = self.kube.get_or_none(NODES.item(self.args.node_name))
            if node is not None:
                profile = self._with_verdicts(profile, node)
            result = publish(self.kube, self.args.node_name, profile, self.args.feature_labels, node=node)
        except (ApiError, NodeMissing, OSError) as exc:
            self.metrics.errors.labels("publish").inc()
            log.error("publish failed", extra={"error": str(exc)})
            return False
        self.metrics.info.clear()
        self.metrics.info.labels(profile.probe, profile.fingerprint, plan.cpu_label(profile)).set(1)
        self.metrics.last_success.set_to_current_time()
        if result.profile_written or result.labels_changed:
            log.info("published", extra={"profile": result.profile_written, "labels": list(result.labels_changed),
                                         "fingerprint": profile.fingerprint, "probe": profile.probe, "skipped": list(self.sources.skipped)})
        self.ready = True
        return True

    def alive(self) -> bool:
        return bool(time.monotonic() - self.heartbeat < 3 * self.args.interval + 60)

    def run(self) -> int:
        if self.args.machine not in ("aarch64", "arm64"):
            self.metrics.arm64.set(0)
            log.warning("not an arm64 node: idling (no profile, no labels)", extra={"machine": self.args.machine})
            self.ready = True
            while not self.stop.wait(self.args.interval):
                self.heartbeat = time.monotonic()
            return 0
        self.metrics.arm64.set(1)
        if self.cpumodels is not None:
            self.cpumodels.start()
        failures = 0
        while not self.stop.is_set():
            self.wake.clear()
            ok = self.cycle()
            failures = 0 if ok else failures + 1
            delay = self.args.interval if ok else min(self.args.interval, 5.0 * 2 ** min(failures, 6))
            self.wake.wait(delay)
        log.info("stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        return verify_cmd.main(argv[1:])
    args = parse_args(argv)
    if args.kvm_replay and args.machine not in ("aarch64", "arm64"):
        args.machine = "aarch64"  # a replayed conversation is an arm64 host's: the machine running the replay does not matter
    sources = Sources(root=args.host_root, machine=args.machine)
    recorder = None
    sessions: verifier.SessionFactory | None = verifier.real_sessions(args.host_root)
    if not args.kvm_replay:
        sources.guest = lambda: kvm_session.LinuxKvm(args.host_root)  # the guest-view run (collect.guest_view)
    try:
        if args.kvm_replay:
            sources.kvm, sessions = _replay(args.kvm_replay)
        elif args.kvm_record:
            recorder = sources.kvm = kvm_replay.Recorder()
    except ProbeError as exc:
        print(f"armcpu-agent: {exc}", file=sys.stderr)
        return 2
    if args.once:
        try:
            profile = collect(args.node_name, sources)
        except (NotArm64, ProbeError) as exc:
            print(f"armcpu-agent: {exc}", file=sys.stderr)
            return 2
        if recorder is not None:
            args.kvm_record.write_text(json.dumps(recorder.recording(), indent=1) + "\n")
        data = to_dict(profile)
        sys.stdout.write(json.dumps(data, indent=1) + "\n" if args.output == "json" else yaml.safe_dump(data, sort_keys=False))
        return 0
    logs.setup(args.log_format)
    try:
        credentials = load_credentials(args.kubeconfig)
    except (ConfigError, OSError) as exc:
        log.error("no cluster credentials", extra={"error": str(exc)})
        return 2
    metrics = Metrics()
    kube = Kube(credentials, on_write=lambda verb, path, code: metrics.writes.labels(verb, str(code)).inc())
    checker = verifier.Verifier(sessions, verifier.boot_id(args.host_root)) if args.verify else None
    agent = Agent(args, kube, sources, metrics, checker)
    server = None
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        server = serving.serve(host or "0.0.0.0", int(port), metrics.registry, ready=lambda: agent.ready, alive=agent.alive)
    def stop(*_: object) -> None:
        agent.stop.set()
        agent.wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    log.info("starting", extra={"node": args.node_name, "interval": args.interval, "host_root": str(args.host_root)})
    try:
        return agent.run()
    finally:
        if server is not None:
            server.shutdown()


def _replay(path: Path) -> tuple[kvm_replay.Replay, verifier.SessionFactory | None]:
    """A probe recording (``--once --kvm-record``) answers the probe only; a verifier recording
    (``verify --kvm-record``) answers the probe and the verifier for its one model."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{path}: cannot read the recording: {exc}") from None
    if isinstance(data, dict) and "probe" in data:
        return kvm_replay.Replay(data["probe"], f"{path} (probe)"), verifier.replayed_sessions(data, str(path))
    return kvm_replay.Replay(data, str(path)), None


if __name__ == "__main__":
    sys.exit(main())
