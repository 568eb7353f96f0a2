"""``armcpu``: baseline, advise, describe, diff, check, models, features.

Human output is a plain table; ``-o json`` is a stable object for scripts. Every input error
exits with status 2 and a message that names the file and the field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from armcpu import advisor, features, hwcaps, identity, midr, named_models, pool
from armcpu import guarantee as guarantees
from armcpu.model import Applied, CombineResult, Model, SettingError, can_run, diff, model_of
from armcpu.profile import Profile, ProfileError, from_dict, hex64
from armcpu_cli import advise as advise_view
from armcpu_cli import output, plots
from armcpu_k8s import manifests


class CliError(Exception):
    pass


def load_profile(path: str, assume_kvm: bool = False) -> Profile:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not valid JSON: {exc}") from None
    profile = from_dict(data, path)
    if assume_kvm:
        profile = pool.assume_kvm(profile)
    return profile




def model_to_dict(m: Model) -> dict[str, Any]:
    return {
        "fingerprint": m.fingerprint,
        "members": list(m.members),
        "registers": {k: hex64(v) for k, v in sorted(m.registers.items())},
        "features": m.features,
        "targets": [
            {"midr": f"0x{t.midr:08x}", "revidr": hex64(t.revidr), "aidr": hex64(t.aidr)} for t in m.targets
        ],
    }


def model_from_file(path: str) -> Model:
    """A model JSON (``baseline -o json``) or a profile JSON, as a model."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise CliError(f"{path}: cannot read: {exc}") from None
    if isinstance(data, dict) and "model" in data:
        data = data["model"]
    return model_of(from_dict(data, path))


def _table(rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(output.table_lines(rows))


def _parse_kv(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise CliError(f"--{what} {item!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def cmd_baseline(args: argparse.Namespace) -> int:
    profiles = [load_profile(p, args.assume_kvm) for p in args.profiles]
    feats = {}
    for name, state in _parse_kv(args.feature, "feature").items():
        feats[name] = {"off": "Disabled", "on": "Required"}.get(state.lower(), state)
    regs = {}
    for ref, value in _parse_kv(args.register, "register").items():
        try:
            regs[ref] = int(value, 0)
        except ValueError:
            raise CliError(f"--register {ref}={value}: not a number") from None
    try:
        base = named_models.lookup(args.base) if args.base else None
    except KeyError as exc:
        raise CliError(f"--base: {exc.args[0]}") from None
    try:
        planned = pool.plan_pool(profiles, identity_from=args.identity_from, base=base, feature_settings=feats, register_settings=regs)
    except SettingError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:  # an --identity-from that names no member
        raise CliError(str(exc).replace("identity_from", "--identity-from")) from None
    result: CombineResult = planned.combined
    applied: Applied = planned.applied
    m = applied.model
    checks = planned.checks
    rendering = planned.qemu
    if args.output == "qemu":
        print(f"-cpu {rendering.cpu_arg}")
        if rendering.machine_properties:
            print(f"-M virt,{','.join(rendering.machine_properties)}")
        return 0 if result.feasible else 1
    vmm = guarantees.Vmm(sysreg=args.vmm_sysreg, impl_cpu=args.vmm_impl_cpu)
    usable = [n for n, c in checks.items() if c.ok]
    promised = guarantees.all_modes(profiles, m, vmm, usable=usable, rendered_cpu=rendering.cpu_properties,
                                    rendered_machine=rendering.machine_properties) if result.feasible else {}
    told = identity.check(m, profiles)
    if args.output in ("json", "yaml"):
        output.emit(
            {
                "model": model_to_dict(m),
                "guarantee": {mode: {"safe": g.safe, "startOn": list(g.start_on), "migrateTo": list(g.migrate_to),
                                     "reason": g.reason, "message": g.message} for mode, g in promised.items()},
                "vmm": {"sysreg": vmm.sysreg, "implCpu": vmm.impl_cpu},
                "identity": {"core": told.core, "truthful": told.truthful, "hiddenHwcaps": list(told.hidden),
                             "suggestion": told.suggestion, "message": identity.message(told)},
                "feasible": result.feasible and all(c.ok for c in checks.values()),
                "blockers": [b.message() for b in result.blockers],
                "switched_off": list(applied.switched_off),
                "notes": list(applied.notes),
                "nodes": {
                    n: {"can_run": c.ok, "refusals": [r.message() for r in c.refusals], "warnings": list(c.warnings)}
                    for n, c in checks.items()
                },
                "qemu": {"cpu": rendering.cpu_arg, "machine": list(rendering.machine_properties)},
            },
            args.output,
        )
        return 0 if result.feasible else 1
    print(f"common model of {len(profiles)} CPUs: fingerprint {m.fingerprint}, {len(m.features)} FEATs")
    for p in profiles:
        d = diff(p.registers, m.registers)
        lost = sorted({f for x in d for f in x.features_only_in_a})
        print(f"  {p.name}: {'can run' if checks[p.name].ok else 'CANNOT run'} it; loses {', '.join(lost) or 'nothing named'}")
        for r in checks[p.name].refusals:
            print(f"    refused: {r.message()}")
        for w in checks[p.name].warnings:
            print(f"    warning: {w}")
    for b in result.blockers:
        print(f"  infeasible: {b.message()}")
    if applied.switched_off:
        print(f"  switched off by settings: {', '.join(applied.switched_off)}")
    print(f"  qemu: -cpu {rendering.cpu_arg}")
    for mode, g in promised.items():
        print(f"  migration under {mode}: {'safe' if g.safe else 'NOT safe'} ({g.reason}): {g.message}")
    if not told.truthful:
        print(f"  identity: {identity.message(told)}")
    return 0 if result.feasible else 1


def cmd_advise(args: argparse.Namespace) -> int:
    profiles = [load_profile(p, args.assume_kvm) for p in args.profiles]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CliError(f"two profiles name the same node: {', '.join(twice[:3])} (each node once)")
    advice = advisor.advise(profiles)
    if args.manifests:
        folder = Path(args.manifests)
        folder.mkdir(parents=True, exist_ok=True)
        for p in advice.proposals:
            manifest = manifests.cpumodel(p, advice.classes)
            (folder / f"{manifest['metadata']['name']}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if args.plot:
        try:
            plots.write(advice, Path(args.plot))
        except plots.PlotError as exc:
            raise CliError(str(exc)) from None
    if args.output in ("json", "yaml"):
        output.emit(advise_view.to_dict(advice), args.output)
    else:
        print(advise_view.table(advice, profiles))
    return 0 if advice.proposals else 1


def cmd_describe(args: argparse.Namespace) -> int:
    p = load_profile(args.profile)
    ident = midr.decode(p.midr)
    feats = features.decode(p.registers)
    caps = hwcaps.decode(p.registers)
    if args.output == "json":
        output.emit(
            {
                "name": p.name,
                "midr": f"0x{p.midr:08x}",
                "implementer": ident.implementer_name,
                "part": ident.part_name,
                "revision": ident.revision_text,
                "fingerprint": p.fingerprint,
                "features": feats,
                "hwcaps": caps,
            },
            "json",
        )
        return 0
    print(f"{p.name}\n  {ident.describe()} (MIDR 0x{p.midr:08x}), fingerprint {p.fingerprint}")
    print(f"  {len(feats)} FEATs: {' '.join(feats)}")
    print(f"  hwcaps: {' '.join(caps)}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    a, b = load_profile(args.a), load_profile(args.b)
    d = diff(a.registers, b.registers)
    if args.output == "json":
        output.emit(
            [
                {"register": x.register, "field": x.field, "a": x.a, "b": x.b,
                 "only_in_a": list(x.features_only_in_a), "only_in_b": list(x.features_only_in_b)}
                for x in d
            ],
            "json",
        )
        return 0
    if not d:
        print("no differences")
        return 0
    rows = [["FIELD", "A", "B", "ONLY IN A", "ONLY IN B"]]
    for x in d:
        rows.append([f"{x.register}.{x.field}", f"{x.a:#x}", f"{x.b:#x}",
                     " ".join(x.features_only_in_a), " ".join(x.features_only_in_b)])
    print(_table(rows))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    m = model_from_file(args.model)
    p = load_profile(args.profile, args.assume_kvm)
    r = can_run(p, m)
    if args.output == "json":
        output.emit({"can_run": r.ok, "refusals": [x.message() for x in r.refusals], "warnings": list(r.warnings)}, "json")
    else:
        print(f"{p.name}: {'can run' if r.ok else 'cannot run'} the model")
        for x in r.refusals:
            print(f"  {x.message()}")
        for w in r.warnings:
            print(f"  warning: {w}")
    return 0 if r.ok else 1


def cmd_models(args: argparse.Namespace) -> int:
    models = named_models.named_models()
    if args.output == "json":
        output.emit({n: {"description": m.description, "midr": f"0x{m.midr:08x}", "source": m.source,
                   "features": features.decode(m.registers)} for n, m in models.items()}, "json")
        return 0
    rows = [["NAME", "MIDR", "DESCRIPTION"]] + [[n, f"0x{m.midr:08x}", m.description] for n, m in models.items()]
    print(_table(rows))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    rows = [["FEATURE", "ENCODING"]]
    out = {}
    for name, feat in sorted(features.all_features().items()):
        sf = feat.single_field
        if sf is not None:
            enc = f"{sf[0].qualified} >= {sf[1]}"
        elif feat.cond is not None:
            enc = "compound: " + ", ".join(sorted({f.qualified for f in feat.fields}))
        else:
            enc = "dependency-only (no register field)"
        rows.append([name, enc])
        out[name] = enc
    if args.output == "json":
        output.emit(out, "json")
    else:
        print(_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="armcpu", description="Common CPU models for arm64 hosts, from profile files (docs/profile-format.md); no cluster needed.",
        epilog="Exit status: 0 done (check: the node can run the model), 1 check refused, pool infeasible or no pool to propose, 2 bad input.")
    sub = parser.add_subparsers(dest="command", required=True)

    def out(p: argparse.ArgumentParser, choices: tuple[str, ...] = ("table", "json")) -> None:
        p.add_argument("-o", "--output", choices=choices, default="table")

    b = sub.add_parser("baseline", help="the common model of a pool of CPUs")
    b.add_argument("profiles", nargs="+", metavar="PROFILE.json")
    b.add_argument("--base", help="cap by a named model (see `armcpu models`)")
    b.add_argument("--feature", action="append", default=[], metavar="FEAT=off|on",
                   help="off: hide the feature and what depends on it; on: refuse members without it (repeatable)")
    b.add_argument("--register", action="append", default=[], metavar="REG.FIELD=VALUE",
                   help="set a field no FEAT name covers, e.g. CTR_EL0.DminLine=4 (repeatable)")
    b.add_argument("--identity-from", help="the member whose MIDR/REVIDR/AIDR the guest sees")
    b.add_argument("--assume-kvm", action="store_true",
                   help="for profiles without writable masks, assume a Linux 6.18-era KVM")
    b.add_argument("--vmm-sysreg", action="store_true",
                   help="the cluster's QEMU accepts -cpu host,SYSREG_* properties (no released QEMU does)")
    b.add_argument("--vmm-impl-cpu", action="store_true",
                   help="the cluster's QEMU accepts -M virt,impl-cpu.N.* and enables cap 239 (no released QEMU does)")
    out(b, ("table", "json", "yaml", "qemu"))
    b.set_defaults(func=cmd_baseline)

    a = sub.add_parser("advise", help="which pools to declare: classes, the migration matrix, proposed pools")
    a.add_argument("profiles", nargs="+", metavar="PROFILE.json", help="one per node (kubectl get ncp NODE -o json | jq .spec)")
    a.add_argument("--assume-kvm", action="store_true",
                   help="for profiles without writable masks, assume a Linux 6.18-era KVM")
    a.add_argument("--manifests", metavar="DIR", help="also write each proposal's CpuModel as DIR/<name>.yaml")
    a.add_argument("--plot", metavar="DIR", help="also draw DIR/matrix.{svg,png} and DIR/front.{svg,png} (the plot extra)")
    out(a, ("table", "json", "yaml"))
    a.set_defaults(func=cmd_advise)

    d = sub.add_parser("describe", help="a CPU in words: MIDR decoded and its FEAT list")
    d.add_argument("profile", metavar="PROFILE.json")
    out(d)
    d.set_defaults(func=cmd_describe)

    df = sub.add_parser("diff", help="what differs between two CPUs, field by field")
    df.add_argument("a", metavar="A.json")
    df.add_argument("b", metavar="B.json")
    out(df)
    df.set_defaults(func=cmd_diff)

    c = sub.add_parser("check", help="whether a node can present a model")
    c.add_argument("model", metavar="MODEL.json")
    c.add_argument("profile", metavar="PROFILE.json")
    c.add_argument("--assume-kvm", action="store_true", help="for a profile without writable masks, assume a Linux 6.18-era KVM")
    out(c)
    c.set_defaults(func=cmd_check)

    m = sub.add_parser("models", help="the named models")
    out(m)
    m.set_defaults(func=cmd_models)

    f = sub.add_parser("features", help="every FEAT name and its encoding")
    out(f)
    f.set_defaults(func=cmd_features)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, ProfileError) as exc:
        print(f"armcpu: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `armcpu ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
