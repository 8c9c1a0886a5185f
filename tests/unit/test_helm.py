"""Static checks of the Kubernetes deployment under infra/helm (no cluster, no helm binary here).

``helm template`` needs the helm binary and the apache-airflow chart, and ``kubectl
--dry-run=client`` still asks an API server for discovery: neither is available on this
machine, so the manifests are checked against strict JSON schemas of the fields they use
(kubeconform-style: unknown fields are errors), and the values against the keys of the
official chart that Flywheel sets. With a cluster at hand, docs/deploy.md gives the
``helm template`` / ``kubectl apply --dry-run=server`` commands.

The environment of every pod is compared with what ``flywheel.core.profiles`` derives, as
tests/unit/test_compose.py does for docker-compose.yml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flywheel.core.config import MLFLOW_USERS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "infra" / "helm"
VALUES = HELM / "airflow-values.yaml"
MANIFESTS = [HELM / "model-server.yaml", HELM / "gpu-worker.yaml", HELM / "platform.yaml", HELM / "dask.yaml"]
SECRETS = HELM / "secrets.example.yaml"

# Top-level keys of the apache-airflow chart's values (chart 1.18) that Flywheel sets.
CHART_KEYS = {
    "executor", "airflowVersion", "images", "postgresql", "redis", "data", "fernetKeySecretName",
    "jwtSecretName", "apiSecretKeySecretName", "env", "extraEnvFrom", "airflowLocalSettings", "config",
    "dags", "apiServer", "scheduler", "dagProcessor", "triggerer", "workers",
}

STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
QUANTITIES = {"type": "object", "additionalProperties": {"type": ["string", "integer"]},
              "propertyNames": {"enum": ["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage"]}}
METADATA = {"type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                           "labels": STR_MAP, "annotations": STR_MAP}}
ENV_VAR = {"type": "object", "required": ["name"], "additionalProperties": False,
           "properties": {"name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                          "value": {"type": "string"},
                          "valueFrom": {"type": "object", "additionalProperties": False, "properties": {
                              "secretKeyRef": {"type": "object", "required": ["name", "key"],
                                               "additionalProperties": False,
                                               "properties": {"name": {"type": "string"},
                                                              "key": {"type": "string"}}}}}}}
PROBE = {"type": "object", "additionalProperties": False, "properties": {
    "httpGet": {"type": "object", "required": ["path", "port"], "additionalProperties": False,
                "properties": {"path": {"type": "string"}, "port": {"type": ["string", "integer"]}}},
    "initialDelaySeconds": {"type": "integer"}, "periodSeconds": {"type": "integer"},
    "failureThreshold": {"type": "integer"}}}
CONTAINER = {"type": "object", "required": ["name", "image"], "additionalProperties": False, "properties": {
    "name": {"type": "string"}, "image": {"type": "string", "pattern": r"^[^:]+:(?!latest$)[\w.-]+$"},
    "command": {"type": "array", "items": {"type": "string"}},
    "args": {"type": "array", "items": {"type": "string"}},
    "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"],
                                         "additionalProperties": False,
                                         "properties": {"name": {"type": "string"},
                                                        "containerPort": {"type": "integer"}}}},
    "env": {"type": "array", "items": ENV_VAR},
    "envFrom": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
        "secretRef": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}},
    "readinessProbe": PROBE, "livenessProbe": PROBE,
    "resources": {"type": "object", "additionalProperties": False,
                  "properties": {"requests": QUANTITIES, "limits": QUANTITIES}},
    "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}}}}
POD_SPEC = {"type": "object", "required": ["containers"], "additionalProperties": False, "properties": {
    "nodeSelector": STR_MAP,
    "tolerations": {"type": "array", "items": {"type": "object"}},
    "securityContext": {"type": "object"},
    "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
    "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
}}
POD_TEMPLATE = {"type": "object", "required": ["metadata", "spec"], "additionalProperties": False, "properties": {
    "metadata": {"type": "object", "additionalProperties": False,
                 "properties": {"labels": STR_MAP, "annotations": STR_MAP}},
    "spec": POD_SPEC,
}}
DEPLOYMENT_SPEC = {"type": "object", "required": ["selector", "template"], "additionalProperties": False,
                   "properties": {
                       "replicas": {"type": "integer", "minimum": 1},
                       "selector": {"type": "object", "required": ["matchLabels"],
                                    "properties": {"matchLabels": STR_MAP}},
                       "template": POD_TEMPLATE,
                   }}
DEPLOYMENT = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
              "properties": {"apiVersion": {"const": "apps/v1"}, "kind": {"const": "Deployment"},
                             "metadata": METADATA, "spec": DEPLOYMENT_SPEC}}
SERVICE = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
           "properties": {"apiVersion": {"const": "v1"}, "kind": {"const": "Service"}, "metadata": METADATA,
                          "spec": {"type": "object", "required": ["selector", "ports"], "additionalProperties": False,
                                   "properties": {"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                                                  "selector": STR_MAP,
                                                  "ports": {"type": "array", "items": {"type": "object"}}}}}}
HPA = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
       "properties": {"apiVersion": {"const": "autoscaling/v2"}, "kind": {"const": "HorizontalPodAutoscaler"},
                      "metadata": METADATA,
                      "spec": {"type": "object", "required": ["scaleTargetRef", "maxReplicas"],
                               "additionalProperties": False, "properties": {
                                   "scaleTargetRef": {"type": "object", "required": ["apiVersion", "kind", "name"]},
                                   "minReplicas": {"type": "integer", "minimum": 1},
                                   "maxReplicas": {"type": "integer", "minimum": 1},
                                   "metrics": {"type": "array", "minItems": 1, "items": {
                                       "type": "object", "required": ["type"]}}}}}}
JOB = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
       "properties": {"apiVersion": {"const": "batch/v1"}, "kind": {"const": "Job"}, "metadata": METADATA,
                      "spec": {"type": "object", "required": ["template"], "additionalProperties": False,
                               "properties": {"backoffLimit": {"type": "integer", "minimum": 0},
                                              "template": {**POD_TEMPLATE, "properties": {
                                                  **POD_TEMPLATE["properties"],
                                                  "spec": {**POD_SPEC, "required": ["containers", "restartPolicy"],
                                                           "properties": {**POD_SPEC["properties"],
                                                                          "restartPolicy": {"enum": [
                                                                              "OnFailure", "Never"]}}}}}}}}}
SCHEMAS = {"Deployment": DEPLOYMENT, "Service": SERVICE, "HorizontalPodAutoscaler": HPA, "Job": JOB}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in documents(path)]


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return data


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def env_of(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in entries if "value" in e}


def test_manifests_validate_against_their_schemas(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        errors = list(jsonschema.Draft7Validator(SCHEMAS[obj["kind"]]).iter_errors(obj))
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(e.message for e in errors)


def test_schema_catches_a_typo(objects: list[dict[str, Any]]) -> None:
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container(broken)["resouces"] = {}
    assert not jsonschema.Draft7Validator(DEPLOYMENT).is_valid(broken)


def test_model_server_cpu_and_gpu_deployments_each_scaled_by_an_hpa(objects: list[dict[str, Any]]) -> None:
    deployments, hpas = by_kind(objects, "Deployment"), by_kind(objects, "HorizontalPodAutoscaler")
    for variant in ("cpu", "gpu"):
        name = f"flywheel-model-server-{variant}"
        deployment = deployments[name]
        template = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        assert template["spec"]["nodeSelector"] == {"flywheel.io/pool": variant}
        limits = container(deployment)["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) is (variant == "gpu")
        assert env_of(container(deployment)["env"])["FLYWHEEL_TORCH_DEVICE"] == {"cpu": "cpu", "gpu": "cuda"}[variant]
        hpa = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name]
        assert len(hpa) == 1 and hpa[0]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa[0]["spec"]["minReplicas"] <= hpa[0]["spec"]["maxReplicas"]
    service = by_kind(objects, "Service")["flywheel-model-server"]
    for variant in ("cpu", "gpu"):
        labels = deployments[f"flywheel-model-server-{variant}"]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()


def test_model_server_runs_the_image_command(objects: list[dict[str, Any]]) -> None:
    cmd = re.search(r"^CMD\s+(\[.*?\])\s*$", (ROOT / "infra" / "Dockerfile.serving").read_text(), re.M | re.S)
    assert cmd
    argv = yaml.safe_load(cmd[1].replace("\\\n", " "))
    for name in ("flywheel-model-server-cpu", "flywheel-model-server-gpu"):
        assert container(by_kind(objects, "Deployment")[name])["command"] == argv


def test_values_use_only_known_chart_keys_and_a_supported_executor(values: dict[str, Any]) -> None:
    assert set(values) <= CHART_KEYS, sorted(set(values) - CHART_KEYS)
    assert values["executor"] in {"CeleryExecutor", "KubernetesExecutor"}
    assert values["postgresql"]["enabled"] is False and values["redis"]["enabled"] is False
    assert values["images"]["airflow"]["tag"] and values["images"]["airflow"]["tag"] != "latest"


@pytest.fixture()
def chart_settings(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """Settings a Flywheel process in a chart pod builds (non-secret env; secrets from flywheel-env)."""
    from flywheel.core.config import Settings

    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    for key, value in env_of(values["env"]).items():
        if key.startswith("FLYWHEEL_"):
            monkeypatch.setenv(key, value)
    return Settings()


def test_chart_env_is_what_the_native_profile_sets(values: dict[str, Any], chart_settings) -> None:
    from flywheel.core.config import Profile
    from flywheel.core.profiles import airflow_production_env, production_env

    assert chart_settings.profile is Profile.PRODUCTION
    env = env_of(values["env"])
    secret_keys = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                   "AIRFLOW__CELERY__RESULT_BACKEND", "FLYWHEEL_PRODUCTION__POSTGRES_URL",
                   "FLYWHEEL_PRODUCTION__REDIS_URL", "FLYWHEEL_PRODUCTION__BROKER_URL",
                   "FLYWHEEL_PRODUCTION__DB_PASSWORD"}
    expected = {k: v for k, v in (airflow_production_env(chart_settings) | production_env(chart_settings)).items()
                if k not in secret_keys and k != "AIRFLOW__CORE__EXECUTOR"}
    drift = {k: (env.get(k), v) for k, v in expected.items() if env.get(k) != v}
    assert not drift, f"infra/helm/airflow-values.yaml differs from flywheel.core.profiles: {drift}"
    assert values["executor"] == airflow_production_env(chart_settings)["AIRFLOW__CORE__EXECUTOR"]
    # The secret-bearing ones come from Secrets the chart mounts, never literal values.
    assert not secret_keys & set(env)
    assert set(values["data"]) == {"metadataSecretName", "resultBackendSecretName", "brokerUrlSecretName"}
    assert "flywheel-env" in values["extraEnvFrom"]


def test_chart_workers_and_gpu_worker_follow_the_settings(
    values: dict[str, Any], objects: list[dict[str, Any]], chart_settings
) -> None:
    prod = chart_settings.production
    assert values["workers"]["replicas"] == len(prod.celery_workers) >= 2
    assert f"--queues {prod.default_queue}" in " ".join(values["workers"]["args"])
    # the components that fork task processes run warm (flywheel/airflow/warm.py)
    assert "exec python -m flywheel.airflow.warm celery worker" in " ".join(values["workers"]["args"])
    assert "exec python -m flywheel.airflow.warm scheduler" in " ".join(values["scheduler"]["args"])
    gpu = container(by_kind(objects, "Deployment")["flywheel-airflow-worker-gpu"])
    assert gpu["args"][:5] == ["python", "-m", "flywheel.airflow.warm", "celery", "worker"]
    assert gpu["args"][gpu["args"].index("--queues") + 1] == prod.gpu_queue
    assert "nvidia.com/gpu" in gpu["resources"]["limits"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in gpu["env"] if "valueFrom" in e}
    assert set(values["data"].values()) <= refs  # the same metadata DB, results and broker as the chart


def test_chart_installs_the_cluster_policy(values: dict[str, Any]) -> None:
    native = (ROOT / "infra" / "airflow" / "airflow_local_settings.py").read_text()
    line = next(line for line in native.splitlines() if line.startswith("from "))
    assert line in values["airflowLocalSettings"]


def test_secret_template_holds_placeholders_only() -> None:
    for doc in documents(SECRETS):
        assert doc["kind"] == "Secret"
        for key, value in doc["stringData"].items():
            for userinfo in re.findall(r"://[^/@\s]*:([^@\s]*)@", value):
                assert re.fullmatch(r"__[A-Z0-9_]+__", userinfo), f"{key}: literal password"
            if key.endswith("USERNAME"):  # an identity's name is no secret: one of Flywheel's own
                assert value in MLFLOW_USERS.values(), f"{key}: unknown identity {value!r}"
            elif "://" not in value:
                assert re.fullmatch(r"__[A-Z0-9_]+__", value), f"{key} holds a literal value"


def test_provision_job_and_mlflow_match_the_native_profile(objects: list[dict[str, Any]], chart_settings) -> None:
    from flywheel.core.profiles import database_name
    from flywheel.stack import launcher as stack

    job = next(o for o in objects if o["kind"] == "Job")
    assert container(job)["command"] == ["python", "-m", "flywheel.stack.provision"]
    assert env_of(container(job)["env"])["FLYWHEEL_PROFILE"] == "production"
    mlflow = container(by_kind(objects, "Deployment")["mlflow"])
    native = stack.get_service("mlflow").command(chart_settings)
    env = env_of(mlflow["env"])
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == native[native.index("--artifacts-destination") + 1]
    # the image's entrypoint (infra/mlflow/entrypoint.sh) runs the basic-auth app, as natively
    assert "command" not in mlflow and mlflow["args"][0] == "--host" and native[1:4] == ["server", "--app-name",
                                                                                        "basic-auth"]
    auth = next(e["valueFrom"]["secretKeyRef"] for e in mlflow["env"] if e["name"] == "MLFLOW_AUTH_DATABASE_URI")
    auth_template = next(d for d in documents(SECRETS) if d["metadata"]["name"] == auth["name"])
    assert auth_template["stringData"][auth["key"]].endswith("/" + database_name(chart_settings, "mlflow_auth"))
    secret_ref = next(e["valueFrom"]["secretKeyRef"]["name"] for e in mlflow["env"]
                      if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    template = next(d for d in documents(SECRETS) if d["metadata"]["name"] == secret_ref)
    assert template["stringData"]["connection"].endswith("/" + database_name(chart_settings, "mlflow"))
    service = by_kind(objects, "Service")["mlflow"]
    assert f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}" == str(
        chart_settings.mlflow_tracking_uri)


def test_dask_cluster_is_the_one_the_chart_tasks_reach_over_tls(
    values: dict[str, Any], objects: list[dict[str, Any]], chart_settings
) -> None:
    """Scheduler Service + Deployment, >= 2 workers scaled by an HPA, mutual TLS from the Secret the
    Airflow workers mount; the chart's tasks are configured for that scheduler."""
    compute = chart_settings.compute
    assert compute.engine == "dask"
    service = by_kind(objects, "Service")["dask-scheduler"]
    assert compute.scheduler_address == f"tls://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert service["spec"]["type"] == "ClusterIP"
    deployments = by_kind(objects, "Deployment")
    worker = deployments["dask-worker"]
    assert worker["spec"]["replicas"] >= 2
    assert by_kind(objects, "HorizontalPodAutoscaler")["dask-worker"]["spec"]["scaleTargetRef"]["name"] == "dask-worker"
    secrets = {d["metadata"]["name"]: d for d in documents(SECRETS)}
    for name in ("dask-scheduler", "dask-worker"):
        pod = deployments[name]["spec"]["template"]["spec"]
        box = pod["containers"][0]
        args = box["args"]
        assert box["command"] == ["dask"] and box["image"] == flywheel_image(objects)
        for flag, path in (("--tls-ca-file", compute.tls_ca_file), ("--tls-cert", compute.tls_cert),
                           ("--tls-key", compute.tls_key)):
            assert args[args.index(flag) + 1] == str(path), (name, flag)
        assert env_of(box["env"])["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "true"
        secret = next(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
        assert set(secrets[secret]["stringData"]) == {p.name for p in (compute.tls_ca_file, compute.tls_cert,
                                                                       compute.tls_key)}
        assert "--dashboard" not in args and "--no-dashboard" in args
    assert deployments["dask-worker"]["spec"]["template"]["spec"]["containers"][0]["args"][1] == \
        compute.scheduler_address
    mounts = {m["mountPath"] for m in values["workers"]["extraVolumeMounts"]}
    assert str(compute.tls_ca_file.parent) in mounts
    assert {v["secret"]["secretName"] for v in values["workers"]["extraVolumes"]} == {"flywheel-dask-tls"}


def flywheel_image(objects: list[dict[str, Any]]) -> str:
    """The Flywheel Airflow image (CPU) the provisioning Job runs: the workers' code."""
    return str(container(next(o for o in objects if o["kind"] == "Job"))["image"])
