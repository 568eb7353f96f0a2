#!/usr/bin/env bash
# Regenerate the image's locked dependencies (exact versions and hashes of every file on PyPI, so the
# lock serves linux/arm64 and linux/amd64 alike) from pyproject.toml's k8s extra and requirements/build.in.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(mktemp -d)/piptools
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "pip-tools==7.*"
cd "$repo_root"
common=(--quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links --no-emit-index-url)
"$venv/bin/pip-compile" "${common[@]}" --extra k8s -o requirements/image.lock pyproject.toml
"$venv/bin/pip-compile" "${common[@]}" -o requirements/build.lock requirements/build.in
