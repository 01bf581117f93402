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
    ("1.5", 1.5), ("1h30m", 5400.0), ("1d 12h", 129600.0), ("2m30s500ms", 150.5),
])
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-1s", "", True, "2w", "1h30", "h30m", "1h-30m"])
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


def test_environment_overrides_are_typed_by_the_field_they_set_not_as_yaml(
    tmp_path: Path,
) -> None:
    """Digits for a token, `0777` for a secret, `true` for a string stay the text given; the
    variable naming the file (DOCGEN_MONITOR_CONFIG) is not an override."""
    env = {"BOX_TOKEN": "t", "DOCGEN_MONITOR_HTTP__API_TOKEN": "12345",
           "DOCGEN_MONITOR_NOTIFIERS__0__SECRET": "0777",
           "DOCGEN_MONITOR_BOX__AUTH__TOKEN": "true",
           "DOCGEN_MONITOR_CONFIG": str(tmp_path / "config.yaml")}
    config = load_config(write(tmp_path, VALID), env=env, notifier_models=models())
    assert config.http.api_token is not None
    assert config.http.api_token.get_secret_value() == "12345"
    assert config.notifiers[0].secret.get_secret_value() == "0777"  # type: ignore[attr-defined]
    assert config.box.auth.token.get_secret_value() == "true"  # type: ignore[union-attr]


def test_route_matches_that_can_never_fire_are_refused_by_path(tmp_path: Path) -> None:
    text = VALID.replace("  - {match: {}, notify: [sink]}", """  - {match: {}, notify: [sink]}
  - {match: {to_status: [failed, complete]}, notify: [sink]}
  - {match: {from_status: Pending, output_type: [pdf, xlsx]}, notify: [nobody]}""")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={"BOX_TOKEN": "t"})
    problems = "\n".join(info.value.problems)
    assert "routes[1].match.to_status: " in problems and "'complete' is not a Box job status" \
        in problems
    assert "routes[2].match.from_status: " in problems and "'Pending'" in problems
    assert "routes[2].match.output_type: " in problems and "'xlsx' is not a Box output type" \
        in problems
    assert "routes[2].notify[0]: no notifier named 'nobody'" in problems


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


# -- bad input: clear answers, no secret, no traceback ------------------------------------


def check_config(path: Path, env: dict[str, str] | None = None,
                 memory_limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    """`docgen-monitor check-config PATH` as a user runs it (optionally with capped memory, so a
    regression that blows up fails fast instead of eating the machine)."""
    import os
    import resource

    def cap() -> None:
        if memory_limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    return subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, preexec_fn=cap)


def assert_one_clean_problem(out: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.splitlines()
    for text in expected:
        assert text in line, line


def test_a_yaml_syntax_error_gives_line_column_and_kind_but_never_the_text(
    tmp_path: Path,
) -> None:
    """The offending line may hold an inline secret: only where and what kind are printed."""
    bad = write(tmp_path, 'box:\n  auth: {method: developer_token, token: "hunter2-inline}\n')
    out = check_config(bad)
    assert_one_clean_problem(out, str(bad), "line 3, column 1", "invalid YAML",
                             "while scanning a quoted scalar")
    assert "hunter2" not in out.stderr and "developer_token" not in out.stderr


def test_a_yaml_tag_or_alias_name_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "box: {auth: *hunter2alias}\n"), env={})
    (problem,) = info.value.problems
    assert "line 1, column 13" in problem and "undefined alias" in problem
    assert "hunter2" not in problem


def test_an_override_of_a_secret_field_takes_the_raw_string(tmp_path: Path) -> None:
    """A string or secret field is never YAML-parsed: `[secret` is the token, not a syntax error."""
    env = {"BOX_TOKEN": "t", "DOCGEN_MONITOR_BOX__AUTH__TOKEN": "[secret: #1",
           "DOCGEN_MONITOR_NOTIFIERS__0__SECRET": "null", "DOCGEN_MONITOR_BOX__MAX_ATTEMPTS": "7"}
    config = load_config(write(tmp_path, VALID), env=env, notifier_models=models())
    assert config.box.auth.token.get_secret_value() == "[secret: #1"  # type: ignore[union-attr]
    assert config.notifiers[0].secret.get_secret_value() == "null"  # type: ignore[attr-defined]
    assert config.box.max_attempts == 7


def test_an_override_with_invalid_yaml_names_the_variable_never_its_value(
    tmp_path: Path,
) -> None:
    out = check_config(write(tmp_path, VALID), env={
        "BOX_TOKEN": "t", "DOCGEN_MONITOR_ROUTES": "[{notify: hunter2-in-env"})
    assert_one_clean_problem(out, "routes: environment variable DOCGEN_MONITOR_ROUTES",
                             "line 1, column", "invalid YAML")
    assert "hunter2" not in out.stderr


def test_a_structured_override_is_parsed_as_yaml(tmp_path: Path) -> None:
    env = {"BOX_TOKEN": "t", "DOCGEN_MONITOR_ROUTES__0__NOTIFY": "[sink]",
           "DOCGEN_MONITOR_POLL__STUCK_AFTER_BY_TEMPLATE": "{'123': 5m}"}
    config = load_config(write(tmp_path, VALID), env=env)
    assert config.routes[0].notify == ["sink"]
    assert config.poll.stuck_after_by_template == {"123": 300.0}


def test_an_override_that_fails_validation_names_its_variable(tmp_path: Path) -> None:
    env = {"BOX_TOKEN": "t", "DOCGEN_MONITOR_BOX__TIMEOUT": "soon-hunter2"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, VALID), env=env)
    (problem,) = info.value.problems
    assert problem.startswith("box.timeout: ") and "(set by DOCGEN_MONITOR_BOX__TIMEOUT)" in problem
    assert "hunter2" not in problem


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    """Nine levels of nine aliases: 387 million strings once expanded, refused while small."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = write(tmp_path, VALID + "\n".join(lines) + "\n")
    out = check_config(bomb, env={"BOX_TOKEN": "t"}, memory_limit_bytes=1 << 30)
    assert_one_clean_problem(out, "expands to more than 100,000 nodes")


def test_a_merge_key_bomb_is_refused_too(tmp_path: Path) -> None:
    lines = ["m0: &m0 {k0: v}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, 10)]
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(write(tmp_path, "\n".join(lines) + "\n"), env={})


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    big = write(tmp_path, VALID + "#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(big, env={"BOX_TOKEN": "t"})
    assert info.value.problems == [f"(file): {big}: larger than 1024 KiB"]


def test_a_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID.replace("s3cret", "s\xe9cret").encode("latin-1"))
    out = check_config(path, env={"BOX_TOKEN": "t"})
    assert_one_clean_problem(out, str(path), "not UTF-8 text (byte 0xe9)", "line 9, column 78")


@pytest.mark.parametrize(("key", "value"), [
    ("poll", "{sweep_interval: .inf}"), ("delivery", "{retention: .inf}"),
    ("poll", "{watch_ttl: .nan}"), ("poll", "{sweep_interval: 1e300}"),
    ("box", "{auth: {method: developer_token, token: x}, requests_per_minute: .inf}"),
])
def test_infinite_nan_or_overflowing_numbers_are_refused(
    tmp_path: Path, key: str, value: str
) -> None:
    text = VALID.replace("poll: {sweep_interval: 2s}\n", "") + f"{key}: {value}\n"
    if key == "box":
        text = text.replace("box:\n  base_url: http://127.0.0.1:8900\n  auth: "
                            '{method: developer_token, token: "${BOX_TOKEN}"}\n', "")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={"BOX_TOKEN": "t"})
    (problem,) = info.value.problems
    assert problem.startswith(f"{key}."), problem


def test_an_infinite_duration_exits_2_with_its_key_path(tmp_path: Path) -> None:
    out = check_config(write(tmp_path, VALID.replace("sweep_interval: 2s", "sweep_interval: .inf")),
                       env={"BOX_TOKEN": "t"})
    assert_one_clean_problem(out, "poll.sweep_interval:", "finite")


@pytest.mark.parametrize("listen", [
    "not a host:9464", "under_score:9464", "[1.2.3.4]:9464", "-dash.example:9464",
    "999.1.1.1.1:80",
])
def test_http_listen_must_name_an_ip_address_or_a_host_name(tmp_path: Path, listen: str) -> None:
    text = VALID.replace('listen: "127.0.0.1:9464"', f'listen: "{listen}"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={"BOX_TOKEN": "t"})
    (problem,) = info.value.problems
    assert problem.startswith("http.listen: ")
    assert "neither an IP address nor a host name" in problem


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::1]:0", "monitor.internal:80",
                                    "localhost:9464"])
def test_http_listen_accepts_addresses_and_host_names(tmp_path: Path, listen: str) -> None:
    text = VALID.replace('listen: "127.0.0.1:9464"', f'listen: "{listen}"')
    assert load_config(write(tmp_path, text), env={"BOX_TOKEN": "t"}).http.listen == listen


# -- several Box accounts ------------------------------------------------------------------

ACCOUNTS = """
accounts:
  - name: eu
    box:
      base_url: http://127.0.0.1:8900
      auth: {method: developer_token, token: "${EU_TOKEN}"}
      requests_per_minute: 300
    poll: {sweep_interval: 30s}
    routes:
      - {match: {to_status: failed}, notify: [sink]}
  - name: us-east
    box:
      auth: {method: developer_token, token: us-token}
state: {url: "sqlite:////tmp/x/state.db"}
poll: {sweep_interval: 2s}
notifiers:
  - {name: sink, type: webhook, url: "http://127.0.0.1:9000/hook", secret: "s3cret"}
routes:
  - {match: {account: us-east}, notify: [sink]}
"""


def test_accounts_load_each_with_its_own_box_and_overrides_or_the_top_level_ones(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, ACCOUNTS), env={"EU_TOKEN": "eu-secret"},
                         notifier_models=models())
    eu, us = config.account_configs
    assert (eu.name, us.name) == ("eu", "us-east")
    assert eu.box.requests_per_minute == 300 and us.box.requests_per_minute == 600
    assert eu.poll is not None and eu.poll.sweep_interval == 30.0
    assert us.poll is not None and us.poll.sweep_interval == 2.0  # the top-level poll
    assert eu.routes is not None and eu.routes[0].match.to_status == ["failed"]
    assert us.routes == config.routes  # the top-level routes
    assert config.account("eu") is eu or config.account("eu") == eu
    with pytest.raises(ConfigError, match="several are configured; name one of: eu, us-east"):
        config.account(None)
    rendered = str(config.redacted())
    assert "eu-secret" not in rendered and "us-token" not in rendered


def test_the_top_level_box_is_one_account_named_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), env={"BOX_TOKEN": "t"})
    (account,) = config.account_configs
    assert account.name == "default" and account.box == config.box
    assert config.account(None) is not None


@pytest.mark.parametrize(("text", "expected"), [
    (VALID.replace("${BOX_TOKEN}", "x") + ACCOUNTS.split("state:")[0].replace("${EU_TOKEN}", "x"),
     "accounts: give either box (one account) or accounts (a list), not both"),
    ("state: {url: 'sqlite:////tmp/x/state.db'}\n",
     "box: field required (or accounts: a list of accounts, each with its own box)"),
    ("accounts: []\n", "accounts: list at least one account"),
])
def test_both_box_and_accounts_neither_or_an_empty_list_exit_2(
    tmp_path: Path, text: str, expected: str,
) -> None:
    assert_one_clean_problem(check_config(write(tmp_path, text)), expected)


def test_account_names_must_be_unique_and_safe_and_their_routes_resolve(
    tmp_path: Path,
) -> None:
    text = """
accounts:
  - name: eu
    box: {auth: {method: developer_token, token: x}}
    routes: [{match: {}, notify: [pager]}]
  - name: eu
    box: {auth: {method: developer_token, token: x}}
  - name: "../etc"
    box: {auth: {method: developer_token, token: x}}
  - name: Prod
    box: {auth: {method: developer_token}}
notifiers:
  - {name: sink, type: webhook, url: "http://127.0.0.1:9000/hook"}
"""
    out = check_config(write(tmp_path, text))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    for problem in (
        "accounts[1].name: duplicate account name 'eu'",
        "accounts[0].routes[0].notify[0]: no notifier named 'pager'",
        "accounts[2].name: String should match pattern",
        "accounts[3].name: String should match pattern",
        "accounts[3].box.auth.token: Field required",
    ):
        assert problem in out.stderr, out.stderr


def test_a_route_matching_an_account_not_configured_is_refused_by_path(tmp_path: Path) -> None:
    text = ACCOUNTS.replace("match: {account: us-east}", "match: {account: [us-east, us]}")
    text = text.replace("match: {to_status: failed}", "match: {to_status: failed, account: x}")
    problems = load_config_problems(tmp_path, text, {"EU_TOKEN": "t"})
    assert problems == [
        "routes[0].match.account: no account named 'us' (configured: eu, us-east)",
        "accounts[0].routes[0].match.account: no account named 'x' (configured: eu, us-east)",
    ]
    single = VALID.replace("{match: {}, notify: [sink]}", "{match: {account: eu}, notify: [sink]}")
    assert load_config_problems(tmp_path, single, {"BOX_TOKEN": "t"}) == [
        "routes[0].match.account: no account named 'eu' (configured: default)"]


def test_environment_overrides_reach_an_account_by_index(tmp_path: Path) -> None:
    env = {"EU_TOKEN": "t",
           "DOCGEN_MONITOR_ACCOUNTS__1__BOX__REQUESTS_PER_MINUTE": "120",
           "DOCGEN_MONITOR_ACCOUNTS__0__BOX__AUTH__TOKEN": "from-env"}
    config = load_config(write(tmp_path, ACCOUNTS), env=env)
    eu, us = config.account_configs
    assert us.box.requests_per_minute == 120
    assert eu.box.auth.token.get_secret_value() == "from-env"  # type: ignore[union-attr]
    bad = load_config_problems(tmp_path, ACCOUNTS, {
        **env, "DOCGEN_MONITOR_ACCOUNTS__1__BOX__REQUESTS_PER_MINUTE": "lots"})
    assert any(p.startswith("accounts[1].box.requests_per_minute: ")
               and "DOCGEN_MONITOR_ACCOUNTS__1__BOX__REQUESTS_PER_MINUTE" in p for p in bad), bad


def load_config_problems(tmp_path: Path, text: str, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    return info.value.problems


def test_the_examples_commented_accounts_block_is_a_valid_configuration(tmp_path: Path) -> None:
    """config/example.yaml documents `accounts:` as a commented block: uncommented in place of
    its `box:` section, it loads, with two accounts and their overrides."""
    import re

    text = (Path(__file__).resolve().parent.parent / "config" / "example.yaml").read_text()
    commented = re.search(r"^# accounts:\n((?:#.*\n)+)", text, re.M)
    assert commented is not None
    block = "accounts:\n" + "".join(line[2:] + "\n" for line in commented[1].splitlines())
    start, end = text.index("\nbox:\n"), text.index("\npoll:\n")
    text = text[:start] + "\n" + block + text[end:]
    # Every variable set (to a value any field takes); those named like an override are
    # written in place, or they would override keys too.
    text = re.sub(r"\$\{DOCGEN_MONITOR_\w+\}", "x", text)
    env = {name: "https://example.com/x" for name in re.findall(r"\$\{(\w+)", text)}
    config = load_config(write(tmp_path, text), env=env, notifier_models=models())
    eu, us = config.account_configs
    assert (eu.name, us.name) == ("eu", "us")
    assert eu.box.requests_per_minute == 400
    assert us.poll is not None and us.poll.sweep_interval == 120
    assert us.routes is not None and [r.notify for r in us.routes] == [["audit"]]
