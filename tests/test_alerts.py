"""deploy/prometheus/ and deploy/grafana/ against Debian's Prometheus.

The alert rules pass `promtool check rules` and their unit tests (`promtool test rules`, with
a control showing those tests catch a changed threshold). Then a real Prometheus (Debian's
`prometheus`, on a free loopback port, with a private config and data directory, stopped by
its PID) scrapes the real service twice a second while Telegram is down and FAL's signatures
go wrong: an alert of the real rules file fires, the outbox alert's expression holds, every
metric the rules name is served, and every panel query of the Grafana dashboard parses and
returns a series.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.fakes.telegram_api import FakeBotApi
from tests.support.nginx import missing
from tests.support.servers import ROOT, GunicornServer, base_env, free_port, run_cli, wait_until
from tests.support.webhooks import fal_ok, new_request_id, signed

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "aibots-alerts.yml"
RULE_TESTS = RULES_DIR / "aibots-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "aibots.json"


def tool(name: str) -> str:
    """Debian's prometheus package; CI installs it (REQUIRE_NGINX=1 makes it required, as
    for the other deployment tools)."""
    found = shutil.which(name)
    if found is None:
        missing(f"{name} is not installed", "apt-get install prometheus")
    return found


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)  # fmt: skip


# --------------------------------------------------------------------------------------------
# promtool


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M))
    assert len(alerts) >= 10
    cases: dict[str, list[bool]] = {}
    # Each case: "- eval_time: T", "alertname: NAME", then "exp_alerts: []" or a list.
    for case in RULE_TESTS.read_text().split("- eval_time:")[1:]:
        name = re.search(r"alertname: (\w+)", case)
        expected = re.search(r"exp_alerts:(.*)", case)
        assert name and expected, case
        cases.setdefault(name.group(1), []).append(expected.group(1).strip() != "[]")
    assert set(cases) == alerts
    for alert, fired in cases.items():
        assert True in fired and False in fired, alert


def cases_of(alert: str) -> str:
    """The unit tests with only the groups that test `alert`: promtool evaluates each group
    minute by minute up to its last eval_time, so the day-long groups of other alerts would
    make each run of the control take the whole file's time."""
    header, *groups = re.split(r"(?m)^(?=  - name: )", RULE_TESTS.read_text())
    kept = [g for g in groups if re.search(rf"(?m)^\s+alertname: {alert}$", g)]
    assert kept, alert
    return header + "".join(kept)


def test_the_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    for old, new in (("> 600", "> 6000"), ("< 21 * 86400", "< 10 * 86400"), ("for: 2m", "for: 9m")):
        text = RULES.read_text()
        assert old in text, old
        # The alert whose rule the change is in: the last one named before it.
        alert = re.findall(r"- alert: (\w+)", text[: text.index(old)])[-1]
        (tmp_path / RULE_TESTS.name).write_text(cases_of(alert))
        # Its cases pass against the rules as they are: what fails them is the change.
        (tmp_path / RULES.name).write_text(text)
        unchanged = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
        assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
        (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
        result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
        assert result.returncode != 0, (old, new)
        assert "FAILED" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# A real Prometheus scraping the real service


@dataclass
class Monitored:
    service: GunicornServer
    prometheus_url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr},
                              timeout=10).json()  # fmt: skip
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def alerts(self) -> dict[str, str]:
        """Alert name -> state (pending or firing) of the rules as Prometheus evaluates them."""
        answer = requests.get(f"{self.prometheus_url}/api/v1/alerts", timeout=10).json()
        return {a["labels"]["alertname"]: a["state"] for a in answer["data"]["alerts"]}


# Twice a second: the fixture waits for a scrape five times and the alert for an evaluation;
# nothing here depends on the interval (the rules' windows are minutes, a rate needs 2 samples).
PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 500ms
  evaluation_interval: 500ms
rule_files:
  - {rules}
scrape_configs:
  - job_name: aibots
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """The service with Telegram down (answering 502) and a known FAL key set, scraped twice
    a second by Prometheus with the project's rules, evaluated twice a second."""
    prometheus = tool("prometheus")
    tool("promtool")
    work = tmp_path_factory.mktemp("monitoring")
    # What `aibots certs check` leaves in the service's working directory.
    (work / "tls-certificate.prom").write_text(
        "tls_certificate_expiry_timestamp_seconds 4102444800\n"
        "tls_certificate_checked_timestamp_seconds 1764547200\n"
    )
    signer = FalSigner()
    with JwksServer() as keys, FakeBotApi() as telegram:
        keys.add(signer)
        env = {
            "FAL_JWKS_URL": keys.jwks_url,
            "TELEGRAM_TOKEN": telegram.token,
            "TELEGRAM_API_URL": telegram.url,
        }
        service = GunicornServer(env, workers=2)
        service.cwd = work
        # Prometheus starts first, on the service's port chosen already: this Prometheus hands
        # its targets to the scrapers only on a 5 s tick, and the service starts meanwhile.
        port = free_port()
        config = work / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(rules=RULES, port=service.port))
        log = (work / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError((work / "prometheus.log").read_text()[-3000:])
                try:
                    return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
                except requests.RequestException:
                    return False

            with service:
                # Telegram goes down once the dispatcher has started (its getMe answered):
                # every call answered 502, as a proxy in front of it would.
                wait_until(lambda: telegram.calls_to("getMe"), 30, what="the dispatcher's getMe")
                telegram.down = True
                # Before the first scrape, which this Prometheus makes only after its tick.
                trainings = attach_trainings(service)
                wait_until(ready, 60, what="prometheus")
                monitored = Monitored(service, url)
                wait_until(lambda: monitored.query('up{job="aibots"} == 1'), 30,
                           what="the first scrape of the service")  # fmt: skip
                drive(monitored, signer, trainings)
                yield monitored
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            log.close()


def attach_trainings(service: GunicornServer) -> list[str]:
    """Three trainings running at FAL, attached as an operator would; their request ids."""
    env = base_env(DATABASE_URL=service.database_url)
    request_ids = [new_request_id() for _ in range(3)]
    for number, request_id in enumerate(request_ids):
        run_cli("avatars", "attach", "--telegram-id", str(700 + number), "--name", "Anna",
                "--training-type", "portrait", "--request-id", request_id, env=env)  # fmt: skip
    return request_ids


def drive(monitored: Monitored, signer: FalSigner, trainings: list[str]) -> None:
    """The trainings finish while Telegram is down, then a burst of forged callbacks."""
    url = f"{monitored.service.url}/api/v1/avatar/status_update"
    for number, request_id in enumerate(trainings):
        body = fal_ok(request_id)
        reply = requests.post(url, data=body, headers=signed(signer, body), timeout=10)
        assert reply.json()["status"] == "received", reply.text
        # Each one seen by a scrape before the next, so the backlog grows between scrapes.
        backlog = f'notifications{{state="pending"}} > {number}'
        wait_until(lambda q=backlog: monitored.query(q), 30, what="the backlog in Prometheus")

    stranger = FalSigner()

    def forged() -> int:
        body = fal_ok(new_request_id())
        return requests.post(url, data=body, headers=signed(stranger, body), timeout=10).status_code

    # One first, scraped, so the counter has a low sample before the burst.
    assert forged() == 401
    wait_until(lambda: monitored.query('webhook_requests_total{outcome="bad_signature"} >= 1'),
               30, what="the first bad signature in Prometheus")  # fmt: skip
    assert {forged() for _ in range(30)} == {401}


def test_a_burst_of_forged_callbacks_fires_the_signature_alert(monitored: Monitored) -> None:
    wait_until(lambda: monitored.alerts().get("AibotsSignatureFailures") == "firing", 60,
               what="AibotsSignatureFailures firing")  # fmt: skip
    assert "AibotsDatabaseDown" not in monitored.alerts()
    assert "AibotsWebhookServiceDown" not in monitored.alerts()


def test_telegram_down_makes_the_outbox_alert_true(monitored: Monitored) -> None:
    """Its `for: 10m` keeps it pending here; the expression itself holds on the real data."""
    wait_until(lambda: "AibotsDispatcherNotSending" in monitored.alerts(), 60,
               what="AibotsDispatcherNotSending pending")  # fmt: skip
    age = monitored.query('notification_oldest_pending_age_seconds{job="aibots"}')
    assert age and float(age[0]["value"][1]) > 0
    tried = monitored.query('telegram_sends_total{job="aibots", result="retry"} > 0')
    assert tried, "the dispatcher tried, and Telegram answered 502"
    sent = monitored.query('telegram_sends_total{job="aibots", result="sent"}')
    assert sent == [], "nothing can have been sent"


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (words followed by a `{` selector)."""
    return set(re.findall(r"([a-z_][a-z0-9_]*)\{", expr))


def test_every_metric_the_rules_use_is_served(monitored: Monitored) -> None:
    # The rules as the running Prometheus loaded them from the project's file.
    loaded = requests.get(f"{monitored.prometheus_url}/api/v1/rules", timeout=10).json()
    rules = [r for g in loaded["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    used = set().union(*(metric_names(r["query"]) for r in rules))
    assert {"webhook_requests_total", "notifications", "database_up"} <= used
    answer = requests.get(f"{monitored.prometheus_url}/api/v1/label/__name__/values",
                          params={"match[]": '{job="aibots"}'}, timeout=10).json()  # fmt: skip
    served = set(answer["data"])
    assert used - served == set(), "rules name metrics the service does not serve"


def test_every_dashboard_query_parses_and_returns_a_series(monitored: Monitored) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(targets) >= 12
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("webhooks by outcome", "latency", "backlog", "oldest", "send results",
                  "trainings"):  # fmt: skip
        assert topic in titles, topic
    # A rate needs two samples in its window: wait for the first one to have them.
    wait_until(lambda: monitored.query(targets[0]["expr"]), 30, what=targets[0]["expr"])
    for target in targets:
        assert monitored.query(target["expr"]), f"no series for {target['expr']}"
    # A query for a metric that does not exist returns none: the check above is real.
    assert monitored.query('sum(rate(no_such_metric_total{job="aibots"}[5m]))') == []
