"""deploy/prometheus: the rules pass `promtool check rules` and their unit tests, every alert is
tested firing and not firing and reads only series the daemon exports, and a real Prometheus
scraping a real daemon raises the failure-ratio alert when the simulator fails most jobs (and
answers every query of the Grafana dashboard)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig, start_simulator
from tests.harness import TOKEN, DaemonProcess, SimControl, free_port, wait_until, write_config
from tests.promql import SCRAPE_SERIES, exported_series, series_names
from tests.receiver import WebhookReceiver
from tests.test_deploy_grafana import for_prometheus, queries

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
#: Where the rules' runbook_url annotations point (the README's sections; see its Alerts).
RUNBOOK_BASE = "https://docs.example.com/docgen-monitor/README.md"
RULES = PROMETHEUS_DIR / "rules.yaml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yaml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
JOB = "docgen-monitor"
FAILURE_ALERT = "DocgenJobFailureRatioHigh"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (.ci/run installs it)")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason="prometheus is not installed (.ci/run installs it)")


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_scrape_config_passes_promtool_check_config() -> None:
    result = promtool("check", "config", SCRAPE_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = [c["job_name"] for c in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]]
    assert jobs == [JOB]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert (firing | quiet) - names == set(), "tests name alerts that do not exist"


def test_every_alert_has_a_severity_and_a_runbook_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        # runbook style: what it means and what to check, not a restatement of the expression
        assert len(rule["annotations"]["description"]) > 200, rule["alert"]
        assert "Check" in rule["annotations"]["description"] or \
            "check" in rule["annotations"]["description"], rule["alert"]


def readme_anchors() -> set[str]:
    """GitHub's anchors of the README's headings: lower case, punctuation out, spaces to -."""
    text = (ROOT / "README.md").read_text()
    headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_links_its_runbook_section_of_the_readme() -> None:
    anchors = readme_anchors()
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in anchors, f"README has no section {rule['alert']}"
    assert "high-availability-several-replicas-on-postgresql" in anchors  # the slug rules hold


def test_rules_read_only_series_the_daemon_exports() -> None:
    allowed = exported_series() | SCRAPE_SERIES
    for rule in alert_rules():
        names = series_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= allowed, (rule["alert"], names - allowed)


def test_series_names_finds_metrics_and_skips_functions_labels_and_variables() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, kind) (rate(box_docgen_x_bucket{code=~"5..",'
            'endpoint="a:b"}[$__rate_interval]))) / on (job) group_left (x) '
            'max without (y) (box_docgen_y offset 5m) > bool 1e3 or absent(up{job="z"})')
    assert series_names(expr) == {"box_docgen_x_bucket", "box_docgen_y", "up"}


# -- a real Prometheus ----------------------------------------------------------------------


class PrometheusProcess:
    """Debian's `prometheus` on loopback with a temporary TSDB; every wait is bounded."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self.data = workdir / "tsdb"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.data}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with session.get(self.url + path, params=params) as resp:
            body = await resp.json()
            assert body["status"] == "success", body
            return body["data"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def prometheus_config(daemon_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the daemon's loopback address as the target and
    1 s intervals, so a test sees in seconds what production sees in minutes. The rules are
    deploy/'s file unchanged: `pending` needs no `for:` to pass, only a true expression."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == JOB]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{daemon_port}"]}]
    return config


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


@needs_prometheus
@pytest.mark.e2e
async def test_a_real_prometheus_scrapes_the_daemon_and_raises_the_failure_ratio_alert(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    sim = await start_simulator(SimulatorConfig(seed=11, developer_tokens=[SecretStr(TOKEN)]))
    receiver = await WebhookReceiver().start()
    port = free_port()
    daemon = DaemonProcess(
        write_config(tmp_path / "config.yaml", box_url=sim.url, hook_url=receiver.url,
                     http_port=port), port)
    prometheus = PrometheusProcess(tmp_path, prometheus_config(port))
    try:
        daemon.start()
        prometheus.start()
        await daemon.wait_ready()

        async def scraped() -> bool:
            data = await prometheus.api(session, "/api/v1/query", query=f'up{{job="{JOB}"}}')
            return [r["value"][1] for r in data["result"]] == ["1"]

        await wait_until(scraped, 30, "Prometheus to scrape the daemon")
        control = SimControl(sim.url, session)
        await control.start_batch(60, outcomes={"failed": 0.7, "completed": 0.3},
                                  submitted_after_s=0.2, min_duration_s=1.0, max_duration_s=5.0)
        alert: dict[str, Any] = {}

        async def alert_raised() -> bool:
            nonlocal alert
            data = await prometheus.api(session, "/api/v1/alerts")
            found = [a for a in data["alerts"] if a["labels"]["alertname"] == FAILURE_ALERT]
            alert = found[0] if found else {}
            return bool(found)

        try:
            await wait_until(alert_raised, 60, f"{FAILURE_ALERT} to become pending or firing",
                             interval_s=0.5)
        except AssertionError:
            raise AssertionError(
                f"prometheus log:\n{prometheus.log_path.read_text()[-3000:]}\n"
                f"daemon log:\n{daemon.logs()[-3000:]}") from None
        assert alert["state"] in {"pending", "firing"}
        assert alert["labels"]["job"] == JOB and alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) > 0.1  # the failure ratio the rule computed

        # What the alert read is the daemon's own count, scraped.
        data = await prometheus.api(
            session, "/api/v1/query",
            query=f'sum(box_docgen_job_transitions_total{{job="{JOB}",to_status="failed"}})')
        assert float(data["result"][0]["value"][1]) >= 10

        # Every dashboard query runs on the scraped data; all but the 429 panel have some.
        for title, expr in queries():
            data = await prometheus.api(session, "/api/v1/query", query=for_prometheus(expr))
            assert data["result"] or title == "Rate limited (429)", (title, expr)
        rules = await prometheus.api(session, "/api/v1/rules")
        loaded = {r["name"] for g in rules["groups"] for r in g["rules"]}
        assert loaded == {rule["alert"] for rule in alert_rules()}
        assert await daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.ensure_stopped()
        prometheus.stop()
        await receiver.close()
        await sim.close()
