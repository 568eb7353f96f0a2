"""``kubectl armcpu``: look at a live cluster's CPUs and models (the ``kubectl-armcpu`` executable).

kubectl plugin conventions: ``--kubeconfig``, ``--context``, ``-n``, ``-o json|yaml|wide``. Cluster
reads use the official ``kubernetes`` client (the ``kubectl`` extra), so every kubeconfig kubectl
accepts works here: client certificates, tokens, ``exec`` credential plugins (EKS, GKE, AKS). It only
reads. What it answers comes from the same code the operator runs (:mod:`armcpu.advisor`,
:func:`armcpu.model.can_run`), applied to what the cluster holds.

Exit status: 0 done, 1 the answer is "none" (no pool to propose), 2 bad usage or no such object,
3 the cluster could not be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armcpu import advisor
from armcpu.model import CanRun, can_run
from armcpu.profile import Profile, ProfileError, from_dict
from armcpu_cli import advise as advise_view
from armcpu_cli import output, plots
from armcpu_k8s import group, labels, selectors
from armcpu_k8s.status import model_from_status

WIDTH = 80
MAX_LISTED = 5
MAX_REFUSALS_SHOWN = 8


class PluginError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Cluster:
    """The few reads the plugin makes, through the official client."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        try:
            import urllib3
            from kubernetes import client, config
        except ImportError:
            raise PluginError("kubectl armcpu needs the kubernetes client: pip install 'armcpu[kubectl]'", 2) from None
        try:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError, TypeError, ValueError) as exc:
            raise PluginError(f"cannot load the kubeconfig: {exc}", 2) from None
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._errors: tuple[type[Exception], ...] = (OSError, urllib3.exceptions.HTTPError)
        self._api_exception = client.ApiException

    def _read(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._api_exception as exc:
            if exc.status == 404:
                raise PluginError(f"{what}: not found", 2) from None
            raise PluginError(f"cannot read {what}: {exc.status} {exc.reason}", 3) from None
        except self._errors as exc:
            raise PluginError(f"cannot read {what}: {exc}", 3) from None

    def profiles(self) -> list[dict[str, Any]]:
        found = self._read("nodecpuprofiles", lambda: self._custom.list_cluster_custom_object(group.GROUP, group.VERSION, "nodecpuprofiles"))
        return list(found.get("items") or [])

    def profile(self, node: str) -> dict[str, Any]:
        return dict(self._read(f"nodecpuprofile {node}",
                               lambda: self._custom.get_cluster_custom_object(group.GROUP, group.VERSION, "nodecpuprofiles", node)))

    def cpumodel(self, name: str) -> dict[str, Any]:
        return dict(self._read(f"cpumodel {name}",
                               lambda: self._custom.get_cluster_custom_object(group.GROUP, group.VERSION, "cpumodels", name)))

    def vm(self, namespace: str, name: str, kind: str = "virtualmachines") -> dict[str, Any]:
        return dict(self._read(f"{kind[:-1]} {namespace}/{name}",
                               lambda: self._custom.get_namespaced_custom_object("kubevirt.io", "v1", namespace, kind, name)))

    def node_labels(self, selector: str | None = None) -> dict[str, dict[str, str]]:
        nodes = self._read("nodes", lambda: self._core.list_node(label_selector=selector or "", _preload_content=False))
        return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in json.loads(nodes.data)["items"]}


def parse_profiles(items: Sequence[Mapping[str, Any]]) -> tuple[list[Profile], list[str]]:
    """The usable profiles, named after their node as the operator names them, and why the others are not."""
    usable, skipped = [], []
    for item in items:
        name = str((item.get("metadata") or {}).get("name") or "?")
        try:
            usable.append(dataclasses.replace(from_dict({**(item.get("spec") or {}), "name": name}, f"NodeCpuProfile {name}"), name=name))
        except ProfileError as exc:
            skipped.append(str(exc))
    return usable, skipped


def _wrap(text: str, first: str = "", rest: str | None = None) -> list[str]:
    """``text`` in lines of at most 80 columns; continuation lines indented ``rest`` (``first`` + 2 spaces)."""
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=first + "  " if rest is None else rest) or [first]


def _listed(names: Sequence[str], wide: bool) -> str:
    if wide or len(names) <= MAX_LISTED:
        return ", ".join(names) or "none"
    return ", ".join(names[:MAX_LISTED]) + f" and {len(names) - MAX_LISTED} more"


def _selected_profiles(cluster: Cluster, args: argparse.Namespace) -> tuple[list[Profile], list[str]]:
    """The NodeCpuProfiles, only of the Nodes ``-l`` selects when given (the profiles carry no node labels)."""
    items = cluster.profiles()
    if args.selector:
        chosen = set(cluster.node_labels(args.selector))
        items = [i for i in items if (i.get("metadata") or {}).get("name") in chosen]
    return parse_profiles(items)


def cmd_advise(cluster: Cluster, args: argparse.Namespace) -> int:
    profiles, skipped = _selected_profiles(cluster, args)
    for why in skipped:
        print(f"kubectl-armcpu: skipped: {why}", file=sys.stderr)
    advice = advisor.advise(profiles)
    if args.plot:
        try:
            plots.write(advice, Path(args.plot))
        except plots.PlotError as exc:
            raise PluginError(str(exc), 2) from None
    if args.output in ("json", "yaml"):
        output.emit(advise_view.to_dict(advice), args.output)
    else:
        print(advise_view.table(advice, profiles, wide=args.output == "wide"))
    return 0 if advice.proposals else 1


def cmd_matrix(cluster: Cluster, args: argparse.Namespace) -> int:
    profiles, _ = _selected_profiles(cluster, args)
    advice = advisor.advise(profiles)
    if args.output in ("json", "yaml"):
        whole = advise_view.to_dict(advice)
        output.emit({"classes": whole["classes"], "stacks": whole["stacks"], "matrix": whole["matrix"]}, args.output)
    else:
        print("\n".join([*advise_view.classes_table(advice), "", *advise_view.matrix_table(advice)]))
    return 0


def cmd_why(cluster: Cluster, args: argparse.Namespace) -> int:
    model_obj = cluster.cpumodel(args.cpumodel)
    status = model_obj.get("status") or {}
    if args.node:
        return _why_node(cluster, args, status)
    counts = status.get("nodes") or {}
    incompatible = status.get("incompatibleNodes") or []
    pending = list(status.get("pendingNodes") or [])
    conditions = [{"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason"), "message": c.get("message")}
                  for c in status.get("conditions") or []]
    if args.output in ("json", "yaml"):
        output.emit({"cpumodel": args.cpumodel, "revision": status.get("revision"), "nodes": counts, "incompatibleNodes": incompatible,
               "pendingNodes": pending, "conditions": conditions}, args.output)
        return 0
    out = _wrap(f"{args.cpumodel}: revision {status.get('revision', '-')}; nodes: {counts.get('selected', 0)} selected, "
                f"{counts.get('compatible', 0)} compatible, {counts.get('incompatible', 0)} incompatible, "
                f"{counts.get('pending') or 0} pending")
    for c in conditions:
        out += _wrap(f"{c['type']}={c['status']} ({c['reason']}): {c['message']}", "  ", "    ")
    shown = incompatible if args.output == "wide" else incompatible[:MAX_LISTED]
    for entry in shown:
        reasons = list(entry.get("reasons") or [])
        out += _wrap(f"{entry['name']}: {reasons[0] if reasons else 'no reason given'}"
                     + (f" (+{len(reasons) - 1} more: kubectl armcpu why {args.cpumodel} {entry['name']})" if len(reasons) > 1 else ""),
                     "  incompatible ", "      ")
    if len(incompatible) > len(shown):
        out.append(f"  and {len(incompatible) - len(shown)} more incompatible node(s) (-o wide)")
    omitted = status.get("incompatibleNodesOmitted") or 0
    if omitted:
        out.append(f"  status lists 20; {omitted} more incompatible node(s) not listed")
    if pending:
        out += _wrap(f"pending (waiting for their kernel's verdict): {_listed(pending, args.output == 'wide')}", "  ", "    ")
    print("\n".join(out))
    return 0


@dataclass(frozen=True)
class NodeAnswer:
    """Why one node can, cannot or cannot yet run a CpuModel's revision in effect."""

    verdict: str  # compatible, incompatible, or pending (with why)
    check: CanRun  # armcpu's rules on the node's live profile against the model in status
    status_reasons: tuple[str, ...]  # what the operator wrote for it (a kernel's refusal, when the rules admit it)


def node_answer(status: Mapping[str, Any], profile: Profile) -> NodeAnswer:
    """Pure: the CpuModel's status and the node's profile in, the answer out. Pending and the
    operator's reasons come from the status; the field-by-field refusals from :func:`can_run`, the
    rule the operator applies, on the model in status."""
    check = can_run(profile, model_from_status(status["model"]))
    listed = next((e for e in status.get("incompatibleNodes") or [] if e.get("name") == profile.name), None)
    if profile.name in (status.get("pendingNodes") or []):
        verdict = "pending: armcpu's rules admit it; its kernel has not verified the revision yet"
    elif listed is not None or not check.ok:
        verdict = "incompatible"
    else:
        verdict = "compatible"
    return NodeAnswer(verdict, check, tuple((listed or {}).get("reasons") or ()))


def _why_node(cluster: Cluster, args: argparse.Namespace, status: Mapping[str, Any]) -> int:
    """Field by field, with FEAT names and the rule that refuses, from the node's live profile and the model in status."""
    if not status.get("model"):
        raise PluginError(f"cpumodel {args.cpumodel} has no computed model yet: kubectl armcpu why {args.cpumodel}", 2)
    profiles, skipped = parse_profiles([cluster.profile(args.node)])
    if not profiles:
        raise PluginError(f"nodecpuprofile {args.node} is not usable: {skipped[0]}", 2)
    answer = node_answer(status, profiles[0])
    check = answer.check
    rows = [{"register": r.register, "field": r.field, "node": f"{r.node_value:#x}", "model": f"{r.model_value:#x}",
             "features": list(r.features), "rule": r.rule} for r in check.refusals]
    if args.output in ("json", "yaml"):
        output.emit({"cpumodel": args.cpumodel, "node": args.node, "revision": status.get("revision"), "verdict": answer.verdict,
               "refusals": rows, "warnings": list(check.warnings), "statusReasons": list(answer.status_reasons)}, args.output)
        return 0
    out = _wrap(f"{args.node} for {args.cpumodel} revision {status.get('revision', '-')}: {answer.verdict}")
    wide = args.output == "wide"
    shown = check.refusals if wide else check.refusals[:MAX_REFUSALS_SHOWN]
    for r in shown:
        feats = f" ({', '.join(r.features)})" if r.features else ""
        out += _wrap(f"{r.register}.{r.field}{feats}: node {r.node_value:#x}, model {r.model_value:#x}", "  ", "    ")
        out += _wrap(f"refused: {r.rule}", "    ", "      ")
    if len(check.refusals) > len(shown):
        out.append(f"  and {len(check.refusals) - len(shown)} more field(s) (-o wide lists them)")
    if check.ok:  # armcpu's rules admit it: whatever the operator wrote is the kernel's word
        out += [line for reason in answer.status_reasons for line in _wrap(reason, "  ", "    ")]
    for w in check.warnings:
        out += _wrap(f"warning: {w}", "  ", "    ")
    print("\n".join(out))
    return 0


def cmd_vm(cluster: Cluster, args: argparse.Namespace) -> int:
    namespace, _, name = args.vm.rpartition("/")
    namespace = namespace or args.namespace
    vm = cluster.vm(namespace, name)
    template_meta = ((vm.get("spec") or {}).get("template") or {}).get("metadata") or {}
    annotations = template_meta.get("annotations") or {}
    model_name = annotations.get(labels.VM_MODEL)
    if not model_name:
        raise PluginError(f"virtualmachine {namespace}/{name} uses no armcpu model (no {labels.VM_MODEL} on its template)", 1)
    status = cluster.cpumodel(model_name).get("status") or {}
    revision = annotations.get(labels.VM_REVISION)
    try:
        vmi = cluster.vm(namespace, name, "virtualmachineinstances")
    except PluginError as exc:
        if exc.status != 2:
            raise
        vmi = None
    nodes = cluster.node_labels()
    template_selector = ((vm["spec"]["template"].get("spec") or {}).get("nodeSelector")) or {}
    start_on = sorted(n for n, ls in nodes.items() if labels.start_key(model_name) in ls
                      and selectors.matches({"matchLabels": template_selector}, ls))
    running_revision = running_on = None
    migrate_to: list[str] = []
    if vmi is not None:
        running_revision = ((vmi.get("metadata") or {}).get("annotations") or {}).get(labels.VM_REVISION)
        running_on = (vmi.get("status") or {}).get("nodeName")
        vmi_selector = (vmi.get("spec") or {}).get("nodeSelector") or {}
        migrate_to = sorted(n for n, ls in nodes.items() if n != running_on and selectors.matches({"matchLabels": vmi_selector}, ls))
    current = status.get("revision")
    # as the operator counts it: the VMI runs another definition than the VM's template now carries
    restart_pending = vmi is not None and running_revision is not None and revision is not None and running_revision != revision
    answer = {"vm": f"{namespace}/{name}", "cpumodel": model_name, "revision": revision, "currentRevision": current,
              "running": vmi is not None, "runningRevision": running_revision, "node": running_on,
              "startOn": start_on, "migrateTo": migrate_to, "restartPending": restart_pending}
    if args.output in ("json", "yaml"):
        output.emit(answer, args.output)
        return 0
    wide = args.output == "wide"
    out = _wrap(f"{namespace}/{name}: model {model_name}, template revision {revision or '-'} "
                f"(current {current if current is not None else '-'})")
    out += _wrap(f"may start on {len(start_on)} node(s): {_listed(start_on, wide)}", "  ", "    ")
    if vmi is None:
        out.append("  not running")
    else:
        out += _wrap(f"running on {running_on or '-'} with revision {running_revision or '-'}", "  ", "    ")
        out += _wrap(f"may migrate to {len(migrate_to)} node(s): {_listed(migrate_to, wide)}", "  ", "    ")
        if restart_pending:
            out += _wrap(f"restart pending: it runs revision {running_revision}; revision {revision} applies at its next restart", "  ", "    ")
    print("\n".join(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl armcpu", description="armcpu's view of a live cluster (reads only).",
                                     epilog="Exit status: 0 done, 1 the answer is none, 2 bad usage or no such object, "
                                            "3 the cluster could not be read.")
    parser.add_argument("--kubeconfig", default=None, help="as kubectl's (default: $KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--context", default=None, help="a context of the kubeconfig (default: its current one)")
    parser.add_argument("-n", "--namespace", default="default", help="for `vm NAME` without a namespace")
    parser.add_argument("-o", "--output", choices=("table", "wide", "json", "yaml"), default="table")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text, func in (("advise", "which pools to declare, from the cluster's NodeCpuProfiles", cmd_advise),
                                ("matrix", "the migration matrix between the cluster's node classes", cmd_matrix)):
        reader = sub.add_parser(command, help=text)
        reader.add_argument("-l", "--selector", default=None, help="only the Nodes this label selector selects")
        if command == "advise":
            reader.add_argument("--plot", metavar="DIR", help="also draw DIR/matrix.{svg,png} and DIR/front.{svg,png} (the plot extra)")
        reader.set_defaults(func=func)
    why = sub.add_parser("why", help="why a CpuModel's nodes are incompatible or pending; with NODE, field by field")
    why.add_argument("cpumodel", metavar="CPUMODEL")
    why.add_argument("node", metavar="NODE", nargs="?")
    why.set_defaults(func=cmd_why)
    vm = sub.add_parser("vm", help="a VM's model, revision, where it may start and migrate, restart pending")
    vm.add_argument("vm", metavar="[NAMESPACE/]NAME")
    vm.set_defaults(func=cmd_vm)
    return parser


def _hoist_globals(argv: Sequence[str]) -> list[str]:
    """kubectl passes flags wherever the user typed them (``kubectl armcpu why m -o json``): move the
    global ones before the command, as argparse wants them."""
    takes_value = {"--kubeconfig", "--context", "-n", "--namespace", "-o", "--output"}  # -l stays with its command
    front, rest = [], []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        flag = item.split("=", 1)[0]
        if flag in takes_value:
            if "=" in item or i + 1 >= len(items):
                front.append(item)
                i += 1
            else:
                front += [item, items[i + 1]]
                i += 2
            continue
        rest.append(item)
        i += 1
    return front + rest


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_hoist_globals(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(Cluster(args.kubeconfig, args.context), args))
    except PluginError as exc:
        print(f"kubectl-armcpu: error: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
