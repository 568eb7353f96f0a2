"""``armcpu-operator``: reconcile CpuModels while holding the leader Lease.

Registers nothing itself: importing :mod:`armcpu_operator.handlers` registers the kopf handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import kopf
from kopf._core.engines.peering import Identity  # kopf.operator's parameter type; kopf does not re-export it

from armcpu.guarantee import Vmm
from armcpu_k8s import logs, serving
from armcpu_k8s.kube import ConfigError, Kube, load_credentials
from armcpu_operator import cleanup, handlers, metrics  # importing handlers registers them with kopf
from armcpu_operator.leader import LeaderElection
from armcpu_operator.runtime import RUNTIME, Webhook

log = logging.getLogger("armcpu.operator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="armcpu-operator", description="Reconcile armcpu CpuModels into common CPU models per node pool.")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG, else in-cluster)")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "armcpu-system"), help="namespace of the leader Lease")
    p.add_argument("--lease-name", default="armcpu-operator")
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(), help="this replica's name in the Lease")
    p.add_argument("--lease-duration", type=int, default=15, help="seconds a candidate waits after the Lease last changed before taking it")
    p.add_argument("--renew-deadline", type=float, default=10.0,
                   help="seconds the leader may go without renewing before it stops (shorter than --lease-duration)")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds between renewals and between attempts to acquire")
    p.add_argument("--no-leader-election", action="store_true", help="run without the Lease (only ever with one replica)")
    p.add_argument("--listen", default="0.0.0.0:8080", help="address:port for /metrics, /healthz, /readyz ('' disables)")
    p.add_argument("--webhook-port", type=int, default=0,
                   help="serve the CpuModel validating, VM mutating and launcher pod mutating webhooks on this port (0: none)")
    p.add_argument("--webhook-host", default="127.0.0.1", help="host name the API server uses to reach the webhook")
    p.add_argument("--webhook-cert", type=Path, help="TLS certificate (PEM) of the webhook server")
    p.add_argument("--webhook-key", type=Path, help="TLS key (PEM) of the webhook server")
    p.add_argument("--webhook-ca", type=Path, help="CA bundle put into the ValidatingWebhookConfiguration (with --webhook-config)")
    p.add_argument("--webhook-cert-check-interval", type=float, default=10.0,
                   help="seconds between checks of the certificate files; changed files (a renewed Secret) are served from then on")
    p.add_argument("--webhook-config", default="", help="let the operator create and own a ValidatingWebhookConfiguration of this name "
                   "(default: none; the Helm chart ships its own)")
    p.add_argument("--vm-webhook-configuration", default="",
                   help="the MutatingWebhookConfiguration holding the mutate-vm.armcpu.io webhook: the operator keeps its matchConditions "
                        "to the VMs some CpuModel selects, so other VM writes never wait for it (default: the --webhook-config one)")
    p.add_argument("command", nargs="?", choices=("run", "cleanup"), default="run",
                   help="run (default), or cleanup: restore every VM armcpu patched, remove every armcpu label and unused "
                        "domain hook ConfigMap, and exit (the chart's uninstall hook)")
    p.add_argument("--stop", action="append", default=[], metavar="KIND/NAME",
                   help="with cleanup: first delete this webhook configuration (validatingwebhookconfiguration/NAME, "
                        "mutatingwebhookconfiguration/NAME), scale this Deployment to zero (deployment/NAME) or keep this "
                        "DaemonSet off every node (daemonset/NAME), in --namespace, and wait until their pods are gone; repeatable")
    p.add_argument("--resync", type=float, default=300.0, help="seconds between unconditional reconciles of each CpuModel")
    p.add_argument("--kernel-verification", choices=("Required", "Advisory"), default="Required",
                   help="Required: a node runs a revision only once its agent verified it on the node's kernel (default). Advisory: "
                        "armcpu's rules decide until a kernel verdict arrives (for nodes whose agents cannot verify); a kernel's "
                        "refusal counts either way")
    p.add_argument("--vmm-sysreg", action="store_true",
                   help="declare that the cluster's QEMU accepts -cpu host,SYSREG_* properties (no released QEMU does): "
                        "HookSidecar models may then be MigrationSafe")
    p.add_argument("--vmm-impl-cpu", action="store_true",
                   help="declare that the cluster's QEMU accepts -M virt,impl-cpu.N.* and enables cap 239 (no released QEMU does)")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_format)
    for noisy in ("kopf.objects", "kopf.activities.startup", "kopf._core.reactor.running"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        credentials = load_credentials(args.kubeconfig)
    except (ConfigError, OSError) as exc:
        log.error("no cluster credentials", extra={"error": str(exc)})
        return 2
    RUNTIME.kube = Kube(credentials, on_write=lambda verb, path, code: metrics.API_WRITES.labels(verb, str(code)).inc())
    if args.command == "cleanup":
        try:
            stops = [cleanup.Stop.parse(ref) for ref in args.stop]
        except ValueError as exc:
            log.error("invalid --stop", extra={"error": str(exc)})
            return 2
        return cleanup.run(RUNTIME.kube, args.namespace, stops)
    RUNTIME.resync_seconds = args.resync
    RUNTIME.kernel_verification = args.kernel_verification
    RUNTIME.vmm = Vmm(sysreg=args.vmm_sysreg, impl_cpu=args.vmm_impl_cpu)
    RUNTIME.vm_webhook_configuration = args.vm_webhook_configuration or args.webhook_config or None
    if args.webhook_config and "." not in args.webhook_config:
        log.error("--webhook-config must be a domain such as armcpu.io: webhook names (<handler>.<config>) need three dot-separated parts")
        return 2
    if args.webhook_port:
        if not (args.webhook_cert and args.webhook_key):
            log.error("--webhook-port needs --webhook-cert and --webhook-key")
            return 2
        RUNTIME.webhook = Webhook(port=args.webhook_port, host=args.webhook_host, certfile=args.webhook_cert,
                                  keyfile=args.webhook_key, cafile=args.webhook_ca, config_name=args.webhook_config or None,
                                  cert_check_seconds=args.webhook_cert_check_interval)
        handlers.register_webhook()

    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()  # kopf waits for thread-based flags in executor threads that never return

    def lost() -> None:
        loop.call_soon_threadsafe(stop.set)

    leader = None
    server = None
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        server = serving.serve(host or "0.0.0.0", int(port), metrics.REGISTRY, ready=ready.is_set)
    try:
        if not args.no_leader_election:
            try:
                leader = LeaderElection(RUNTIME.kube, args.namespace, args.lease_name, args.identity, duration=args.lease_duration,
                                        renew_deadline=args.renew_deadline, retry=args.retry_period, on_lost=lost)
            except ValueError as exc:
                log.error("invalid leader election timing", extra={"error": str(exc)})
                return 2
            waiting = threading.Event()
            previous = {sig: signal.signal(sig, lambda *_: waiting.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
            acquired = leader.acquire(waiting)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if not acquired:
                return 0
            leader.keep()
            metrics.LEADER.set(1)
        log.info("starting", extra={"identity": args.identity, "webhook": bool(RUNTIME.webhook)})
        asyncio.set_event_loop(loop)
        # kopf's own identity would come from getpass.getuser(), which raises for a uid with no passwd
        # entry: the image's 65532 has none (the first run on a real kubelet crashed on it).
        loop.run_until_complete(kopf.operator(clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready,
                                              identity=Identity(args.identity)))
    finally:
        metrics.LEADER.set(0)
        if leader is not None:
            leader.release()
        if server is not None:
            server.shutdown()
        loop.close()
    if leader is not None and leader.lost.is_set():
        log.error("stopped: lost the leader Lease")
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
