"""The KubeVirt onDefineDomain hook (armcpu_k8s/domain_hook.py) on libvirt domain XML samples.

The samples in tests/fixtures/domains are aarch64 domains in the shapes the hook meets: written in
KubeVirt's converter style (double quotes, explicit end tags, the qemu namespace declared on the root,
an existing ``<qemu:commandline>``), and what a real libvirt 9.0 made of each (``libvirt-9.0.0-*``,
recorded with ``python -m armcpu_testing.libvirt``: define, then ``dumpxml``). Before and after, each
is checked against libvirt's RELAX NG schema with libvirt's ``virt-xml-validate``; tests/libvirt runs
the rewritten domains through the live daemon.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from armcpu.model import combine
from armcpu.pool import assume_kvm as assume_kvm_masks
from armcpu.render import RENDERERS
from armcpu_k8s import domain_hook
from tests.helpers import load_cpu

SAMPLES = sorted((Path(__file__).parent.parent / "fixtures" / "domains").glob("*.xml"))
QEMU = "{http://libvirt.org/schemas/domain/qemu/1.0}"

G3 = assume_kvm_masks(load_cpu("kvm-guest/graviton3-neoverse-v1-host6.18.json"))
G4 = assume_kvm_masks(load_cpu("kvm-guest/graviton4-neoverse-v2-host6.18.json"))
RENDERING = RENDERERS["qemu-sysreg-v9"].render(combine([G3, G4]).model, [G3, G4])
MACHINE = "impl-cpu.0.midr=0x410fd401,impl-cpu.0.revidr=0x0,impl-cpu.0.aidr=0x0"


def vmi(cpu: str | None = RENDERING.cpu_arg, machine: str | None = None) -> dict[str, object]:
    annotations = {"kubevirt.io/latest-observed-api-version": "v1"}
    if cpu is not None:
        annotations[domain_hook.CPU_ANNOTATION] = cpu
    if machine is not None:
        annotations[domain_hook.MACHINE_ANNOTATION] = machine
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "web-1", "namespace": "web", "annotations": annotations}}


def args_of(xml: str) -> list[str | None]:
    line = ET.fromstring(xml).find(f"{QEMU}commandline")
    return [] if line is None else [a.get("value") for a in line.findall(f"{QEMU}arg")]


def without_armcpu_args(xml: str, added: list[str]) -> str:
    """The domain with exactly ``added`` taken back out, canonicalised for comparison."""
    root = ET.fromstring(xml)
    line = root.find(f"{QEMU}commandline")
    assert line is not None
    values = [a.get("value") for a in line.findall(f"{QEMU}arg")]
    for start in range(len(values) - len(added) + 1):
        if values[start : start + len(added)] == added:
            for element in line.findall(f"{QEMU}arg")[start : start + len(added)]:
                line.remove(element)
            break
    else:
        raise AssertionError(f"{added} not found in {values}")
    if len(line) == 0:
        root.remove(line)
    return canonical(ET.tostring(root, encoding="unicode"))


def canonical(xml: str) -> object:
    """The document as namespace-qualified names, attributes and text: prefixes are not meaning
    (libvirt's libxml2 and KubeVirt's Go decoder both resolve them to namespace URIs)."""

    def walk(element: ET.Element) -> object:
        return (element.tag, sorted(element.attrib.items()), (element.text or "").strip(),
                [walk(child) for child in element])

    return walk(ET.fromstring(xml))


def validate(xml: str, tmp_path: Path) -> None:
    tool = shutil.which("virt-xml-validate")
    if tool is None:
        pytest.skip("virt-xml-validate (Debian libvirt-clients) is not installed; scripts/setup.sh installs it")
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    done = subprocess.run([tool, str(path), "domain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_rendering_used_here_lowers_fields() -> None:
    assert any(p.startswith("SYSREG_") for p in RENDERING.cpu_properties)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_hook_appends_the_models_cpu_and_machine_and_changes_nothing_else(sample: Path, tmp_path: Path) -> None:
    before = sample.read_text()
    validate(before, tmp_path)
    after = domain_hook.rewrite(before, vmi(machine=MACHINE))
    validate(after, tmp_path)
    added = ["-cpu", RENDERING.cpu_arg, "-machine", MACHINE]
    old_args = args_of(before)
    assert args_of(after) == old_args + added  # after the user's args, so QEMU's last -cpu is ours
    assert without_armcpu_args(after, added) == canonical(before)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_hook_is_idempotent(sample: Path) -> None:
    once = domain_hook.rewrite(sample.read_text(), vmi(machine=MACHINE))
    assert domain_hook.rewrite(once, vmi(machine=MACHINE)) == once


def test_existing_env_entries_stay_after_the_args(tmp_path: Path) -> None:
    before = (SAMPLES[0].parent / "kubevirt-arm64-sve-off-qemu-env.xml").read_text()
    after = domain_hook.rewrite(before, vmi())
    line = ET.fromstring(after).find(f"{QEMU}commandline")
    assert line is not None
    tags = [child.tag.removeprefix(QEMU) for child in line]
    assert tags == ["arg", "arg", "arg", "arg", "env"]
    validate(after, tmp_path)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_a_vmi_armcpu_did_not_annotate_passes_through_byte_for_byte(sample: Path) -> None:
    before = sample.read_text()
    assert domain_hook.rewrite(before, vmi(cpu=None)) == before


@pytest.mark.parametrize(
    ("cpu", "machine", "message"),
    [
        ("max", None, "is not 'host'"),
        ("host,sve=off -device virtio-rng", None, "is not 'host'"),
        ("host,SYSREG_X=0,", None, "is not 'host'"),
        ("host", "impl-cpu.0.midr=0x1 -S", "not a list of name=value"),
        (7, None, "is not 'host'"),
    ],
)
def test_malformed_annotations_are_refused_with_the_value_named(cpu: object, machine: str | None, message: str) -> None:
    bad = vmi(cpu=None, machine=machine)
    bad["metadata"]["annotations"][domain_hook.CPU_ANNOTATION] = cpu  # type: ignore[index]
    with pytest.raises(domain_hook.HookError, match=message) as caught:
        domain_hook.rewrite(SAMPLES[0].read_text(), bad)
    assert repr(machine if "name=value" in message else cpu) in str(caught.value)


def test_a_domain_that_is_not_host_passthrough_is_refused() -> None:
    before = (SAMPLES[0].parent / "kubevirt-arm64.xml").read_text().replace('mode="host-passthrough"', 'mode="custom"')
    with pytest.raises(domain_hook.HookError, match="'custom'"):
        domain_hook.rewrite(before, vmi())


def test_the_hook_runs_standalone_as_the_sidecar_shim_calls_it(tmp_path: Path) -> None:
    """Copied alone into an empty directory (as the ConfigMap mounts it), run with the shim's flags."""
    script = tmp_path / "onDefineDomain"
    script.write_text(Path(domain_hook.__file__).read_text())
    script.chmod(0o755)
    before = SAMPLES[0].read_text()
    env = {"PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-I", str(script), "--vmi", json.dumps(vmi()), "--domain", before],
                        capture_output=True, text=True, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == domain_hook.rewrite(before, vmi())
    bad = subprocess.run([sys.executable, "-I", str(script), "--vmi", json.dumps(vmi(cpu="max")), "--domain", before],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "armcpu.io/qemu-cpu='max'" in bad.stderr


def test_the_hook_imports_only_the_standard_library() -> None:
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(domain_hook.__file__).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names
