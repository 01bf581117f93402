"""deploy/compose.yaml: a valid Compose file (the compose-spec parser, strict about unknown keys
and types), whose files exist, whose services find each other on the ports they serve, whose
monitor config the daemon accepts, whose two monitor replicas share one PostgreSQL and differ in
nothing but their published port, and whose simulator command really starts a simulator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import load_config
from monitor.notify.base import NotifierRegistry
from tests.harness import free_port, run_until_healthy

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
MONITORS = ("monitor-1", "monitor-2")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def binds(service: str) -> dict[str, Path]:
    """container path -> host path, for the service's bind mounts (named volumes aside)."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def monitor_config_path() -> Path:
    return binds(MONITORS[0])["/etc/docgen-monitor/config.yaml"]


def test_the_compose_spec_parser_accepts_the_file_and_rejects_a_typo() -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="pip install -e '.[test]'")
    parsed = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())
    assert parsed.service_names() == ["simulator", "postgres", *MONITORS, "prometheus", "grafana"]
    typo = COMPOSE.read_text().replace("    read_only: true", "    readonly: true")
    with pytest.raises(ValueError, match="readonly"):
        compose_spec.PyCompose.from_yaml(typo)


def test_every_mounted_file_and_the_build_context_exist() -> None:
    for name in services():
        for target, source in binds(name).items():
            assert source.exists(), f"{name}: {source} for {target}"
    build = services()["simulator"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()
    for name in MONITORS:
        assert services()[name]["image"] == services()["simulator"]["image"]


def test_every_published_port_binds_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_the_monitor_config_is_valid_and_the_services_find_each_other() -> None:
    password = "from-the-environment"
    config = load_config(monitor_config_path(), env={"POSTGRES_PASSWORD": password},
                         notifier_models=NotifierRegistry.from_entry_points().config_models())
    sim_command = services()["simulator"]["command"]
    sim_port = sim_command[sim_command.index("--port") + 1]
    assert config.box.base_url == f"http://simulator:{sim_port}"

    # Both replicas on the postgres service's database, as its user, with its password.
    postgres = services()["postgres"]
    pg = postgres["environment"]
    assert config.state.url == (
        f"postgresql://{pg['POSTGRES_USER']}:{password}@postgres:5432/{pg['POSTGRES_DB']}")
    assert config.ha.lease_ttl == 15.0
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "ports" not in postgres  # reached on the compose network only
    for name in MONITORS:
        monitor = services()[name]
        assert monitor["environment"]["POSTGRES_PASSWORD"] == pg["POSTGRES_PASSWORD"]
        assert monitor["depends_on"]["postgres"] == {"condition": "service_healthy"}
    first, second = (services()[name] for name in MONITORS)
    assert {k: v for k, v in first.items() if k != "ports"} == \
        {k: v for k, v in second.items() if k != "ports"}
    published = [p for name in MONITORS for p in services()[name]["ports"]]
    assert published == ["127.0.0.1:9464:9464", "127.0.0.1:9465:9464"]
    assert all(p.endswith(f":{config.http.port}") for p in published)

    prometheus_binds = binds("prometheus")
    scrape = yaml.safe_load(prometheus_binds["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"] == [
        {"targets": [f"{name}:{config.http.port}" for name in MONITORS]}]
    for rule_file in scrape["rule_files"]:  # relative to the config's directory
        assert f"/etc/prometheus/{rule_file}" in prometheus_binds

    grafana_binds = binds("grafana")
    provisioning = grafana_binds["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services()["prometheus"]["ports"]
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "docgen-monitor.yaml").read_text())["providers"]
    home = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/") and home in grafana_binds


async def test_the_simulator_service_command_starts_a_simulator_its_healthcheck_sees(
    tmp_path: Path
) -> None:
    """The service's command, as the image's entrypoint would run it (loopback and a free port
    in place of 0.0.0.0:8900), passes the service's own healthcheck."""
    service = services()["simulator"]
    port = free_port()
    args = [str(a) for a in service["command"]]
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    check = [sys.executable if a == "python" else a.replace(":8900/", f":{port}/")
             for a in service["healthcheck"]["test"][1:]]
    code = await run_until_healthy([sys.executable, "-m", "monitor.cli", *args], check,
                                   tmp_path / "simulator.log")
    assert code == 0
