"""Configuration: every rejection path names its problem by path; secrets stay secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_config, parse_duration_s
from monitor.errors import ConfigError
from monitor.notify.base import NotifierRegistry

VALID = """
box:
  base_url: http://127.0.0.1:8900
  auth: {method: developer_token, token: "${BOX_TOKEN}"}
poll: {sweep_interval: 2s}
state: {url: "sqlite:////tmp/x/state.db"}
baseline: silent
notifiers:
  - {name: sink, type: webhook, url: "http://127.0.0.1:9000/hook", secret: "s3cret"}
routes:
  - {match: {}, notify: [sink]}
http: {listen: "127.0.0.1:9464"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def models() -> dict:  # type: ignore[type-arg]
    return NotifierRegistry.from_entry_points().config_models()


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0), (7, 7.0),
    ("1.5", 1.5),
])
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-1s", "", True, "2w"])
def test_bad_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(text)


def test_the_contract_example_loads_with_secrets_expanded(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), env={"BOX_TOKEN": "tok-123"},
                         notifier_models=models())
    assert config.poll.sweep_interval == 2.0
    assert config.box.auth.method == "developer_token"
    assert config.box.auth.token.get_secret_value() == "tok-123"  # type: ignore[union-attr]
    assert config.http.host == "127.0.0.1" and config.http.port == 9464
    rendered = str(config.redacted())
    assert "tok-123" not in rendered and "s3cret" not in rendered


def test_every_problem_is_listed_by_path(tmp_path: Path) -> None:
    text = """
box:
  base_url: ftp://nowhere
  auth: {method: ccg, client_id: abc}
poll: {sweep_interval: soon, sweep_intervall: 2s}
notifiers:
  - {name: sink, type: webhook, url: "not a url", secret: "s"}
  - {name: sink, type: pager}
routes:
  - {match: {to_status: failed}, notify: [sink, nobody]}
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={}, notifier_models=models())
    problems = "\n".join(info.value.problems)
    for expected in [
        "box.base_url:", "box.auth.client_secret:", "box.auth.subject_id:",
        "poll.sweep_interval:", "poll.sweep_intervall:", "notifiers[0].url:",
        "notifiers[1].type: unknown notifier type 'pager'",
    ]:
        assert expected in problems, problems


def test_route_naming_an_unknown_notifier_is_refused(tmp_path: Path) -> None:
    text = VALID.replace("notify: [sink]", "notify: [sink, nobody]")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={"BOX_TOKEN": "t"})
    assert info.value.problems == ["routes[0].notify[1]: no notifier named 'nobody'"]


def test_an_unset_variable_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, VALID), env={})
    assert "box.auth.token: environment variable BOX_TOKEN is not set" in info.value.problems


def test_environment_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    env = {"BOX_TOKEN": "t", "DOCGEN_MONITOR_POLL__SWEEP_INTERVAL": "750ms",
           "DOCGEN_MONITOR_NOTIFIERS__0__URL": "http://10.0.0.1/x",
           "DOCGEN_MONITOR_BASELINE": "notify"}
    config = load_config(write(tmp_path, VALID), env=env)
    assert config.poll.sweep_interval == 0.75
    assert config.baseline == "notify"
    assert config.notifiers[0].model_extra == {"url": "http://10.0.0.1/x", "secret": "s3cret"}


def test_check_config_exits_2_listing_problems_and_0_when_valid(tmp_path: Path) -> None:
    bad = write(tmp_path, VALID.replace("2s", "fast").replace("${BOX_TOKEN}", "x"))
    out = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "poll.sweep_interval: " in out.stderr
    good = write(tmp_path, VALID.replace("${BOX_TOKEN}", "x"))
    out = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", str(good)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout
