"""deploy/systemd/aibots-maintenance.{service,timer}: valid, hardened, running what it says."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.test_deploy_systemd import (
    MAX_EXPOSURE,
    UNITS,
    VENV_PYTHON,
    exposure,
    systemd_analyze,
    unit_settings,
    verify,
)

SERVICE, TIMER = "aibots-maintenance.service", "aibots-maintenance.timer"


def stubbed(tmp_path: Path) -> tuple[Path, Path]:
    """The unit and its timer, the program the unit runs replaced by an executable stub."""
    stub = tmp_path / "stub" / "python"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit, timer = tmp_path / SERVICE, tmp_path / TIMER
    text = (UNITS / SERVICE).read_text()
    assert VENV_PYTHON in text
    unit.write_text(text.replace(VENV_PYTHON, str(stub)))
    timer.write_text((UNITS / TIMER).read_text())
    return unit, timer


def test_the_unit_and_its_timer_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    unit, timer = stubbed(tmp_path)
    result = verify(unit, timer)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_unit_is_hardened_like_the_others(tmp_path: Path) -> None:
    unit, _ = stubbed(tmp_path)
    assert exposure(unit) <= MAX_EXPOSURE
    mine, webhook = unit_settings(SERVICE), unit_settings("webhook.service")
    start = list(webhook).index("NoNewPrivileges")
    for key in list(webhook)[start:]:
        if key in ("WantedBy",):
            continue
        assert mine.get(key) == webhook[key], key


def test_the_unit_runs_maintenance_once_with_the_service_settings() -> None:
    unit = unit_settings(SERVICE)
    assert unit["Type"] == ["oneshot"]
    assert unit["ExecStart"] == [f"{VENV_PYTHON} -m service maintenance"]
    assert unit["User"] == ["aibots"]
    assert unit["EnvironmentFile"] == ["/etc/aibots/webhook.env"]
    timer = unit_settings(TIMER)
    assert timer["Unit"] == [SERVICE]
    assert timer["Persistent"] == ["true"]
    calendar = subprocess.run(
        [systemd_analyze(), "calendar", *timer["OnCalendar"]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert calendar.returncode == 0, calendar.stderr
    assert "*-*-* 03:30:00" in calendar.stdout
