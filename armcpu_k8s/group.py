"""armcpu's API group and version, apart from the pydantic types in :mod:`armcpu_k8s.api`, so the node
agent (which only writes objects) runs on the standard library, PyYAML and prometheus-client."""

from __future__ import annotations

from typing import Literal

GROUP = "armcpu.io"
VERSION = "v1alpha1"
API_VERSION: Literal["armcpu.io/v1alpha1"] = "armcpu.io/v1alpha1"
