"""`aibots certs check`: the served certificate's expiry as a metric, on a systemd timer.

`deploy/certs.sh served` reads the certificate the real nginx serves (the project's site in
Debian's layout, tests/support/nginx.py) and writes the metrics file; the real service passes
that file on in /metrics. The timer and its service unit pass `systemd-analyze verify`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509

from tests.support.nginx import dev_certs, missing, nginx_binary, running_nginx
from tests.support.servers import ROOT, GunicornServer, free_port

pytestmark = pytest.mark.nginx

CERTS_SH = ROOT / "deploy" / "certs.sh"
UNITS = ROOT / "deploy" / "systemd"
AIBOTS = "/usr/local/sbin/aibots"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nginx_binary()
    return dev_certs(tmp_path_factory.mktemp("certs") / "dev")


@pytest.fixture(scope="module")
def nginx_port(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[int]:
    with running_nginx(tmp_path_factory.mktemp("nginx"), certs, upstream=free_port()) as nginx:
        yield nginx.port


def served(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CERTS_SH), "served", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def metric(text: str, name: str) -> float:
    found = re.findall(rf"^{name} (\S+)$", text, re.M)
    assert len(found) == 1, text
    return float(found[0])


def test_the_served_certificates_expiry_is_written_for_prometheus(
    tmp_path: Path, certs: Path, nginx_port: int
) -> None:
    output = tmp_path / "tls-certificate.prom"
    started = dt.datetime.now(dt.UTC).timestamp()
    result = served(f"127.0.0.1:{nginx_port}", "--metrics", str(output))
    assert result.returncode == 0, result.stderr
    assert "valid until" in result.stdout
    leaf = x509.load_pem_x509_certificate((certs / "aibots_kz.crt").read_bytes())
    text = output.read_text()
    assert metric(text, "tls_certificate_expiry_timestamp_seconds") == (
        leaf.not_valid_after_utc.timestamp()
    )
    assert metric(text, "tls_certificate_checked_timestamp_seconds") >= int(started)
    assert "# TYPE tls_certificate_expiry_timestamp_seconds gauge" in text
    assert not list(tmp_path.glob("*.tmp")), "written through a temporary file, renamed"


def test_a_check_that_reaches_no_certificate_fails_and_keeps_the_old_file(tmp_path: Path) -> None:
    output = tmp_path / "tls-certificate.prom"
    output.write_text("tls_certificate_expiry_timestamp_seconds 1\n")
    result = served(f"127.0.0.1:{free_port()}", "--metrics", str(output))
    assert result.returncode == 1
    assert "no certificate from 127.0.0.1:" in result.stderr
    assert output.read_text() == "tls_certificate_expiry_timestamp_seconds 1\n"


def test_expiry_within_the_warning_days_is_said(nginx_port: int) -> None:
    result = subprocess.run(["bash", str(CERTS_SH), "served", f"127.0.0.1:{nginx_port}"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "WARN_DAYS": "400"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "expires in" in result.stderr and "renew it" in result.stderr


def test_the_service_passes_the_file_on_in_metrics(tmp_path: Path) -> None:
    """The file sits in the service's working directory (/var/lib/aibots under systemd)."""
    (tmp_path / "tls-certificate.prom").write_text(
        "# TYPE tls_certificate_expiry_timestamp_seconds gauge\n"
        "tls_certificate_expiry_timestamp_seconds 1893456000\n"
        "not a metric line at all {\n"
    )
    server = GunicornServer({}, workers=1)
    server.cwd = tmp_path
    with server:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
    assert metric(text, "tls_certificate_expiry_timestamp_seconds") == 1893456000
    assert "not a metric line" not in text
    assert metric(text, "training_hard_limit_seconds") == 21600


def test_the_timer_and_its_unit_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze is not installed", "apt-get install systemd")
    stub = tmp_path / "aibots"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for name in ("aibots-certs.service", "aibots-certs.timer"):
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace(AIBOTS, str(stub)))
    assert AIBOTS in (UNITS / "aibots-certs.service").read_text()
    result = subprocess.run([analyze, "verify", str(tmp_path / "aibots-certs.timer"),
                             str(tmp_path / "aibots-certs.service")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_wrapper_knows_the_command_and_refuses_others(tmp_path: Path) -> None:
    """deploy/aibots (root only) runs `certs check` before it reads any settings."""
    if os.geteuid() != 0:
        missing("deploy/aibots runs as root only", "run the tests as root")
    result = subprocess.run(["bash", str(ROOT / "deploy" / "aibots"), "certs", "renew"],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin",
                                 "AIBOTS_ENV_FILE": str(tmp_path / "absent.env")})  # fmt: skip
    assert result.returncode == 2 and "usage: aibots certs check" in result.stderr
    script = (ROOT / "deploy" / "aibots").read_text()
    assert "certs.sh served 127.0.0.1:8443 --metrics /var/lib/aibots/tls-certificate.prom" in (
        script
    )
