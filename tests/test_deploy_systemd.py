"""deploy/systemd units and deploy/install.sh.

`systemd-analyze verify` and `systemd-analyze security --offline=true` judge the real unit
files, with only the paths they run replaced by stub executables. MemoryDenyWriteExecute= is
checked by running the real service under the same seccomp rule systemd installs for it.
install.sh runs into a staging root (`--root`), which touches nothing outside it.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from service.settings import Settings
from service.web.server import GRACEFUL_TIMEOUT_SECONDS
from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support.servers import GunicornServer, base_env, free_port, wait_until
from tests.support.webhooks import fal_ok, new_request_id, signed

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
INSTALL_SH = ROOT / "deploy" / "install.sh"
SCRIPTS = [
    ROOT / "deploy" / "install.sh",
    ROOT / "deploy" / "certs.sh",
    ROOT / "deploy" / "fal-networks.sh",
    ROOT / "deploy" / "aibots",
]
VENV_PYTHON = "/opt/aibots/venv/bin/python"
MAX_EXPOSURE = 2.5


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        # The deployment tools travel with nginx in CI: REQUIRE_NGINX=1 makes this a failure.
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("systemd-analyze is not installed, and REQUIRE_NGINX=1 requires it")
        pytest.skip(reason="systemd-analyze is not installed (apt-get install systemd)")
    return found


def unit_settings(name: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, values in order of appearance."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def stubbed_units(tmp_path: Path) -> list[Path]:
    """The real units with the one program they run replaced by an executable stub."""
    stub = tmp_path / "stub" / "python"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for name in ("webhook.service", "bot.service"):
        text = (UNITS / name).read_text()
        assert VENV_PYTHON in text, f"{name} no longer runs {VENV_PYTHON}: update this test"
        copy = tmp_path / name
        copy.write_text(text.replace(VENV_PYTHON, str(stub)))
        copies.append(copy)
    return copies


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=units[0].parent,
    )


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


# --------------------------------------------------------------------------------------------
# systemd-analyze


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    webhook, bot = stubbed_units(tmp_path)
    result = verify(webhook, bot)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """verify exits 0 on an unknown key, so the check above also demands silence."""
    webhook, _ = stubbed_units(tmp_path)
    webhook.write_text(webhook.read_text().replace("KillMode=mixed", "KilMode=mixed"))
    assert "KilMode" in verify(webhook).stderr
    webhook.write_text((UNITS / "webhook.service").read_text())  # the real program is absent
    assert "not executable" in verify(webhook).stderr


def test_webhook_unit_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    webhook, bot = stubbed_units(tmp_path)
    score = exposure(webhook)
    assert score <= MAX_EXPOSURE, f"webhook.service exposure {score}"
    assert exposure(bot) <= MAX_EXPOSURE

    # The same unit stripped of its hardening scores far worse: the score is measured.
    lines = webhook.read_text().splitlines()
    cut = lines.index(next(line for line in lines if line.startswith("# Hardening")))
    end = lines.index("[Install]")
    bare = tmp_path / "bare" / "webhook.service"
    bare.parent.mkdir()
    bare.write_text("\n".join(lines[:cut] + lines[end:]) + "\n")
    assert exposure(bare) > 5


# --------------------------------------------------------------------------------------------
# What the units promise


def test_webhook_unit_runs_the_service_as_documented() -> None:
    unit = unit_settings("webhook.service")
    assert unit["ExecStart"] == [f"{VENV_PYTHON} -m service serve"]
    assert unit["ExecStartPre"] == [f"{VENV_PYTHON} -m service migrate"]
    assert unit["ExecReload"] == ["/bin/kill -s HUP $MAINPID"]
    assert unit["Type"] != ["notify"], "python -m service serve sends no sd_notify"
    assert unit["User"] == ["aibots"] and unit["Group"] == ["aibots"]
    assert unit["EnvironmentFile"] == ["/etc/aibots/webhook.env"]
    assert unit["WorkingDirectory"] == ["/var/lib/aibots"]
    assert unit["StateDirectory"] == ["aibots"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillMode"] == ["mixed"]
    assert unit["SyslogIdentifier"] == ["aibots-webhook"]
    environment = dict(item.split("=", 1) for item in unit["Environment"])
    runtime = unit["RuntimeDirectory"][0]
    assert environment["PROMETHEUS_MULTIPROC_DIR"].startswith(f"/run/{runtime}/")
    assert environment["LOG_FORMAT"] == "json"
    # The units' default database is an absolute path inside the state directory.
    database = Settings.from_mapping({"DATABASE_URL": environment["DATABASE_URL"]}).database_url
    assert database == "sqlite:////var/lib/aibots/aisha.db"


def test_stop_timeout_outlasts_gunicorns_graceful_timeout() -> None:
    for name in ("webhook.service", "bot.service"):
        timeout = unit_settings(name)["TimeoutStopSec"][0]
        assert timeout.endswith("s")
        assert int(timeout[:-1]) > GRACEFUL_TIMEOUT_SECONDS, name


def test_bot_unit_runs_the_bot_with_the_same_settings_and_hardening() -> None:
    bot, webhook = unit_settings("bot.service"), unit_settings("webhook.service")
    assert bot["ExecStart"] == [f"{VENV_PYTHON} -m service bot"]
    assert bot["EnvironmentFile"][0] == "/etc/aibots/webhook.env"
    assert bot["SyslogIdentifier"] == ["aibots-bot"]
    hardening = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                 "MemoryDenyWriteExecute", "SystemCallFilter", "CapabilityBoundingSet",
                 "RestrictAddressFamilies", "User")  # fmt: skip
    for key in hardening:
        assert bot[key] == webhook[key], key


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own syscall groups (`systemd-analyze syscall-filter`), members unexpanded."""
    listing = subprocess.run(
        [systemd_analyze(), "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for item in groups[name]:
        names |= expand(item, groups) if item.startswith("@") else {item}
    return names


def allowed_syscalls(unit: dict[str, list[str]]) -> set[str]:
    """The allow-list the unit's SystemCallFilter= lines give, as systemd computes it."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in unit["SystemCallFilter"]:
        deny = value.startswith("~")
        for item in value.lstrip("~").split():
            names = expand(item, groups) if item.startswith("@") else {item}
            allowed = allowed - names if deny else allowed | names
    return allowed


LAUNCHER = r"""
import ctypes, ctypes.util, errno, json, mmap, os, sys
lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM
MASKED_EQ = 7

# MemoryDenyWriteExecute=yes, as systemd's seccomp rule: no mapping both writable and
# executable, no mprotect() to executable, no executable shared memory.
mdwe = lib.seccomp_init(ALLOW)
def deny(name, arg, mask):
    number = lib.seccomp_syscall_resolve_name(name.encode())
    rule = (Cmp * 1)(Cmp(arg, MASKED_EQ, mask, mask))
    assert lib.seccomp_rule_add_array(mdwe, EPERM, number, 1, rule) == 0, name
deny("mmap", 2, mmap.PROT_WRITE | mmap.PROT_EXEC)
deny("mprotect", 2, mmap.PROT_EXEC)
deny("pkey_mprotect", 2, mmap.PROT_EXEC)
deny("shmat", 2, 0o100000)
assert lib.seccomp_load(mdwe) == 0

# SystemCallFilter= with SystemCallErrorNumber=EPERM: the allow-list, EPERM for the rest.
with open(sys.argv[1]) as handle:
    names = json.load(handle)
listed = lib.seccomp_init(EPERM)
for name in names:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number >= 0:
        assert lib.seccomp_rule_add_array(listed, ALLOW, number, 0, None) == 0, name
assert lib.seccomp_load(listed) == 0

# The rules are in force: each of these must now be refused.
for attempt in (
    lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC),
    lambda: os.setuid(os.getuid()),           # @privileged
    lambda: os.sched_setaffinity(0, {0}),     # @resources
):
    try:
        attempt()
    except PermissionError:
        continue
    sys.exit("a rule is not in force")
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_the_service_runs_under_the_units_seccomp_rules(tmp_path: Path) -> None:
    """SystemCallFilter= and MemoryDenyWriteExecute= of webhook.service, applied with libseccomp
    as systemd applies them: migrations, gunicorn and its workers, uvloop, cryptography's
    Ed25519, SQLAlchemy's greenlets and prometheus_client all work under them."""
    if ctypes.util.find_library("seccomp") is None:
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("libseccomp is not installed, and REQUIRE_NGINX=1 requires it")
        pytest.skip(reason="libseccomp is not installed (apt-get install libseccomp2)")
    unit = unit_settings("webhook.service")
    assert unit["MemoryDenyWriteExecute"] == ["yes"]
    assert unit["SystemCallErrorNumber"] == ["EPERM"]
    allowed = tmp_path / "allowed.json"
    allowed.write_text(json.dumps(sorted(allowed_syscalls(unit))))
    launcher = tmp_path / "seccomp_exec.py"
    launcher.write_text(LAUNCHER)
    confined = [sys.executable, str(launcher), str(allowed), sys.executable, "-m", "service"]

    signer = FalSigner()
    with JwksServer() as keys:
        keys.add(signer)
        port = free_port()
        env = base_env(
            DATABASE_URL=f"sqlite:///{tmp_path}/confined.db",
            BIND=f"127.0.0.1:{port}",
            WEB_CONCURRENCY="2",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
            FAL_JWKS_URL=keys.jwks_url,
        )
        migrated = subprocess.run([*confined, "migrate"], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*confined, "serve"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"serve died: {log.read_text()[-3000:]}")
                try:
                    return requests.get(f"{url}/health", timeout=2).status_code == 200
                except requests.RequestException:
                    return False

            wait_until(up, 30, what="the service under the seccomp rules")
            body = fal_ok(new_request_id())
            reply = requests.post(f"{url}/api/v1/avatar/status_update", data=body,
                                  headers=signed(signer, body), timeout=10)  # fmt: skip
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"] == "unmatched"
            assert requests.get(f"{url}/metrics", timeout=5).status_code == 200
            # A graceful reload (ExecReload=) replaces the workers under the same rules.
            os.kill(process.pid, signal.SIGHUP)
            time.sleep(1.0)
            wait_until(up, 30, what="the service after SIGHUP")
            assert process.poll() is None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    output = log.read_text()
    assert "Operation not permitted" not in output and "PermissionError" not in output, output
    assert process.returncode == 0, output[-3000:]


def test_reload_replaces_the_workers_but_only_a_restart_applies_settings(tmp_path: Path) -> None:
    """What `systemctl reload webhook` (ExecReload=, SIGHUP to the main process) really does,
    and why the README sends settings through a restart: systemd reads EnvironmentFile= only
    when it starts the process, and the service builds its settings once at start. Here the
    settings come from a .env in the working directory, which the service reads at start
    too; a reload must not pick up its change, a restart must."""
    unit = unit_settings("webhook.service")
    assert unit["ExecReload"] == ["/bin/kill -s HUP $MAINPID"]
    env_file = tmp_path / ".env"
    env_file.write_text("WEBHOOK_UNSIGNED_FROM=127.0.0.1/32\n")
    body = b'{"request_id": "reload-probe", "status": "completed"}'
    headers = {"Content-Type": "application/json"}

    def unsigned_from(server: GunicornServer) -> list[str]:
        status = requests.get(f"{server.url}/api/v1/webhook/status", timeout=5).json()
        return list(status["unsigned_from"])

    def unsigned_post(server: GunicornServer) -> int:
        url = f"{server.url}/api/v1/avatar/status_update"
        return requests.post(url, data=body, headers=headers, timeout=10).status_code

    server = GunicornServer({}, workers=2)
    server.cwd = tmp_path
    with server:
        assert unsigned_from(server) == ["127.0.0.1/32"]
        assert unsigned_post(server) == 200
        before = set(server.worker_pids())
        assert len(before) == 2

        env_file.write_text("WEBHOOK_UNSIGNED_FROM=\n")  # the operator edits the settings
        answered: list[int] = []
        refused: list[str] = []
        stop = threading.Event()

        def keep_asking() -> None:
            while not stop.is_set():
                try:
                    answered.append(requests.get(f"{server.url}/health", timeout=5).status_code)
                except requests.ConnectionError as exc:
                    # A connection an old worker had accepted but not yet read may be reset as
                    # it stops (the README says so); a refused connect would mean the listening
                    # socket was closed, which a reload must never do.
                    if "connection refused" in str(exc).lower():
                        refused.append(repr(exc))

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            os.kill(server.pid, signal.SIGHUP)

            def replaced() -> bool:
                now = set(server.worker_pids())
                return len(now) == 2 and not now & before

            wait_until(replaced, 30, what="two new workers after SIGHUP")
            served = len(answered)
            wait_until(lambda: len(answered) > served + 20, 30, what="answers from new workers")
        finally:
            stop.set()
            asker.join(30)
        assert refused == [], "the listening socket stays open through a reload"
        assert set(answered) == {200}
        assert server.proc is not None and server.proc.poll() is None
        # The master counted the two workers that ended (AibotsWorkersRestarting reads it).
        scraped = requests.get(f"{server.url}/metrics", timeout=5).text
        assert re.search(r"^webhook_worker_exits_total 2\.0$", scraped, re.M), scraped[-2000:]
        # New workers, old settings: the reload did not apply the edit.
        assert unsigned_from(server) == ["127.0.0.1/32"]
        assert unsigned_post(server) == 200

        # A restart (stop, start: what systemctl restart does) applies it.
        server.stop()
        server.start()
        server.wait_ready()
        assert unsigned_from(server) == []
        assert unsigned_post(server) == 401


# --------------------------------------------------------------------------------------------
# Scripts and install.sh


def test_scripts_parse_and_pass_shellcheck_where_available() -> None:
    for script in SCRIPTS:
        assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def install(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SKIP_APT": "1", **env},
    )


def test_install_into_a_staging_root_is_complete_and_idempotent(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    made = subprocess.run(["bash", str(ROOT / "deploy" / "certs.sh"), "dev", str(certs)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr
    root = tmp_path / "root"
    # Debian's own default site, as the nginx package leaves it.
    (root / "etc/nginx/sites-available").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled").mkdir(parents=True)
    default = "server { listen 80 default_server; }\n"
    (root / "etc/nginx/sites-available/default").write_text(default)
    (root / "etc/nginx/sites-enabled/default").symlink_to("/etc/nginx/sites-available/default")

    first = install(root, CERTS_DIR=str(certs))
    assert first.returncode == 0, first.stdout + first.stderr
    # Nothing outside the root: every host-changing step is announced as skipped.
    for step in (
        "python3 -m venv",
        "/opt/aibots/venv/bin/python -m pip install",
        "systemctl daemon-reload",
        "systemctl enable --now aibots-certs.timer",
        "nginx -t",
    ):
        assert f"skipped (--root): {step}" in first.stdout.replace("\\ ", " "), step

    app = root / "opt/aibots/app"
    assert (app / "service" / "__main__.py").is_file()
    assert (app / "pyproject.toml").is_file()
    for absent in (".venv", ".git", "certs", "var", ".env"):
        assert not (app / absent).exists(), absent
    units = ("webhook.service", "bot.service", "aibots-certs.service", "aibots-certs.timer",
             "aibots-maintenance.service", "aibots-maintenance.timer")  # fmt: skip
    for name in units:
        installed = root / "etc/systemd/system" / name
        assert installed.read_text() == (UNITS / name).read_text()
    site = root / "etc/nginx/sites-available/aibots.kz.conf"
    assert site.read_text() == (ROOT / "deploy/nginx/aibots.kz.conf").read_text()
    link = root / "etc/nginx/sites-enabled/aibots.kz.conf"
    assert os.readlink(link) == "../sites-available/aibots.kz.conf"
    assert (root / "etc/nginx/sites-available/aibots.kz-legacy-http.conf").is_file()
    assert not (root / "etc/nginx/sites-enabled/aibots.kz-legacy-http.conf").exists()
    assert (root / "etc/nginx/aibots.kz.d").is_dir()
    nginx_src = ROOT / "deploy/nginx"
    shared = root / "etc/nginx/conf.d/aibots.kz.conf"
    assert shared.read_text() == (nginx_src / "conf.d/aibots.kz.conf").read_text()
    for snippet in (nginx_src / "snippets").glob("*.conf"):
        assert (root / "etc/nginx/snippets" / snippet.name).read_text() == snippet.read_text()
    assert not (root / "etc/nginx/sites-enabled/default").is_symlink(), "Debian's default site"
    assert "disabling Debian's default nginx site" in first.stdout
    assert not list((root / "etc/nginx/aibots.kz.d").glob("*.conf")), "allow-list is opt-in"
    ssl_dir = root / "etc/ssl/aibots"
    assert (ssl_dir / "aibots_kz.chain.crt").read_text() == (
        certs / "aibots_kz.chain.crt"
    ).read_text()
    assert stat.S_IMODE((ssl_dir / "aibots.kz.key").stat().st_mode) == 0o600
    assert os.access(root / "usr/local/sbin/aibots", os.X_OK)

    env_file = root / "etc/aibots/webhook.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # The example's relative SQLite path would land in the working directory: replaced.
    values = {}
    for line in env_file.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    assert values["DATABASE_URL"] == "sqlite:////var/lib/aibots/aisha.db"
    assert Settings.from_mapping(values).bind == "127.0.0.1:8000"

    # Again, with settings edited in between: the code is replaced, the settings are kept.
    env_file.write_text(env_file.read_text() + "TELEGRAM_TOKEN=123:edited\n")
    (app / "stale.txt").write_text("from an older version")
    second = install(root, CERTS_DIR=str(certs))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "keeping /etc/aibots/webhook.env" in second.stdout
    assert "TELEGRAM_TOKEN=123:edited" in env_file.read_text()
    assert not (app / "stale.txt").exists()
    assert not (root / "opt/aibots/app.new").exists() and not (root / "opt/aibots/app.old").exists()


def test_install_without_certificates_leaves_the_site_disabled(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = install(root, CERTS_DIR=str(tmp_path / "none"))
    assert result.returncode == 0, result.stderr
    assert "no certificate yet" in result.stderr
    assert "aibots-certs.timer is installed, not enabled" in result.stdout
    assert "enable --now aibots-certs.timer" not in result.stdout
    assert (root / "etc/nginx/sites-available/aibots.kz.conf").is_file()
    assert not (root / "etc/nginx/sites-enabled/aibots.kz.conf").exists()


def test_install_dry_run_changes_nothing_and_tells_the_truth(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = install(root, "--dry-run", CERTS_DIR=str(tmp_path / "none"))
    assert result.returncode == 0, result.stderr
    assert "+ install" in result.stdout
    assert not [p for p in root.rglob("*") if p.is_file()], "dry run wrote files"
    # As a real run without certificates: the site is not enabled, and the settings file
    # gets the rewritten absolute database path, not the example's relative one.
    assert "ln -s ../sites-available/aibots.kz.conf" not in result.stdout
    assert "the nginx site is installed but not enabled" in result.stderr
    assert "would hold: DATABASE_URL=sqlite:////var/lib/aibots/aisha.db" in result.stdout
    assert ".env.example /" not in result.stdout.replace("\\ ", " ")

    # With certificates it says it would enable the site, as a real run does.
    certs = dev_certs_for(tmp_path / "certs")
    result = install(tmp_path / "root2", "--dry-run", CERTS_DIR=str(certs))
    assert result.returncode == 0, result.stderr
    assert "ln -s ../sites-available/aibots.kz.conf" in result.stdout


def dev_certs_for(target: Path) -> Path:
    made = subprocess.run(["bash", str(ROOT / "deploy" / "certs.sh"), "dev", str(target)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return target


def test_the_cli_wrapper_reads_the_environment_file_like_systemd(tmp_path: Path) -> None:
    """deploy/aibots parses NAME=value lines (quotes, comments) without running them."""
    env_file = tmp_path / "webhook.env"
    env_file.write_text(
        "# comment\n"
        "DATABASE_URL=sqlite:////var/lib/aibots/other.db\n"
        'TELEGRAM_TOKEN="123:abc def"\n'
        "FAL_KEY='k$(touch /tmp/aibots-should-not-exist)'\n"
        "   LOG_LEVEL=DEBUG   \n"
    )
    script = (ROOT / "deploy" / "aibots").read_text()
    # Run the parsing part only: everything before the final `cd` and `exec`.
    parse = script[: script.index("cd /var/lib/aibots")]
    parse = parse.replace("[[ $EUID -eq 0 ]] ||", "true ||")
    probe = parse + 'python3 -c "import json, os; print(json.dumps(dict(os.environ)))"\n'
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "AIBOTS_ENV_FILE": str(env_file)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["DATABASE_URL"] == "sqlite:////var/lib/aibots/other.db"
    assert seen["TELEGRAM_TOKEN"] == "123:abc def"
    assert seen["FAL_KEY"] == "k$(touch /tmp/aibots-should-not-exist)"
    assert seen["LOG_LEVEL"] == "DEBUG"
    assert seen["LOG_FORMAT"] == "console"
    assert not Path("/tmp/aibots-should-not-exist").exists()

    # AIBOTS_DATABASE_URL points one command elsewhere (the README's restore), file or not.
    other = "sqlite:////var/lib/aibots/restored.db"
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "AIBOTS_ENV_FILE": str(env_file),
                                 "AIBOTS_DATABASE_URL": other})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["DATABASE_URL"] == other
