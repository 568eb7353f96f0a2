"""The webhook server takes renewed certificate files without a restart (cert-manager renews the
Secret in place; the kubelet updates the mounted files)."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import running_operator, wait_for

pytestmark = pytest.mark.integration


def _served(port: int) -> str:
    try:
        return ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    except OSError:
        return ""


def test_renewed_webhook_certificate_files_are_served_without_a_restart(control_plane: ControlPlane, tmp_path: Path) -> None:
    first_cert, first_key, ca = control_plane.serving_cert("renewal-first")
    renewed_cert, renewed_key, _ = control_plane.serving_cert("renewal-second")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first_cert, cert)
    shutil.copy(first_key, key)
    with running_operator(control_plane, identity="renewal", webhook_tls=(cert, key, ca)) as operator:
        assert operator.webhook_port is not None
        wait_for(lambda: _served(operator.webhook_port or 0), 30, "the webhook serving")
        assert ssl.PEM_cert_to_DER_cert(_served(operator.webhook_port)) == ssl.PEM_cert_to_DER_cert(first_cert.read_text())
        # as the kubelet updates a Secret volume: new files under the same paths
        shutil.copy(renewed_key, key)
        shutil.copy(renewed_cert, cert)
        renewed = ssl.PEM_cert_to_DER_cert(renewed_cert.read_text())
        # kopf's server re-read them only every 60 s, so for a minute after a renewal the old certificate
        # was served (issue 19); the default check is every 10 s now
        wait_for(lambda: (pem := _served(operator.webhook_port or 0)) and ssl.PEM_cert_to_DER_cert(pem) == renewed, 25,
                 "the renewed certificate served")
        doc = ("apiVersion: armcpu.io/v1alpha1\nkind: CpuModel\nmetadata: {name: renewed}\n"
               "spec: {nodeSelector: {matchLabels: {pool: x}}, features: {FEAT_NOPE: Disabled}}\n")
        refused = control_plane.kubectl("apply", "-f", "-", input=doc, check=False)
        assert refused.returncode != 0 and "unknown feature 'FEAT_NOPE'" in refused.stderr, "the API server reaches the renewed server"
        assert operator.proc.poll() is None
