"""The operator's README stays complete: every configuration key the models accept is in the
reference, every metric the registry exports is in the metrics list, every alert in the alert
list, and every file under deploy/ is mentioned."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from monitor.config import AccountConfig, Config
from monitor.metrics import Metrics
from monitor.notify.base import NotifierRegistry

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start: end if end != -1 else None]


def first_column(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)`", text, flags=re.MULTILINE))


def nested_models(annotation: Any) -> tuple[bool, list[type[BaseModel]]]:
    """(is a list, the models inside) for an annotation like `list[Route] | None`."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return False, [annotation]
    if origin is list:
        return True, nested_models(typing.get_args(annotation)[0])[1]
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found += nested_models(arg)[1]
        return False, found
    return False, []


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        is_list, models = nested_models(field.annotation)
        if name == "accounts":  # an account's box, poll and routes are the sections above
            keys |= {f"{key}[].{part}" for part in AccountConfig.model_fields}
            continue
        if name == "notifiers":  # each type brings its own keys
            models = list(NotifierRegistry.from_entry_points().config_models().values())
        if not models:
            keys.add(key)
        for member in models:
            keys |= model_keys(member, key + ("[]." if is_list else "."))
    return keys


def test_every_configuration_key_is_in_the_reference() -> None:
    expected = model_keys(Config)
    documented = first_column(section("Configuration reference"))
    assert {"box.auth.client_secret", "notifiers[].url", "routes[].match.to_status",
            "routes[].continue"} <= expected
    assert expected - documented == set(), "keys missing from the README"
    assert documented - expected == set(), "README documents keys that do not exist"


def test_every_exported_metric_is_in_the_metrics_list() -> None:
    documented = set(re.findall(r"`(box_docgen_\w+)", section("Metrics and health")))
    suffix = {"counter": "_total", "info": "_info"}
    exported = {f.name + suffix.get(f.type, "") for f in Metrics().registry.collect()}
    assert exported == documented


def test_every_alert_is_in_the_alert_list() -> None:
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    assert first_column(section("Alerts")) == alerts


def test_every_deploy_file_is_mentioned() -> None:
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file():
            rel = path.relative_to(ROOT)
            names = [path.name, *(str(p) for p in rel.parents if str(p) not in (".", "deploy"))]
            assert any(name in README for name in names), rel
