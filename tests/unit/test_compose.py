"""Static checks of the production-like stack (docker-compose.yml), no Docker engine needed.

The file is validated against the Compose Specification JSON schema vendored as
``infra/compose-spec.json``: the copy that Docker Compose v2.40.3 embeds and
enforces (compose-go's ``schema/compose-spec.json``, from the compose-spec/compose-spec
repository, Apache-2.0). Compose validates *after* interpolation, so the file is
interpolated first with the variables that ``infra/gen-env.sh`` writes, exactly as
``docker compose`` would read them from ``.env``.

When a Docker Compose v2 CLI is at hand (``docker compose``, a v2 ``docker-compose``,
or ``FLYWHEEL_COMPOSE_BIN``), ``config --quiet`` is run as well; it needs no engine.
Compose v1 (the ``docker-compose`` 1.x PyPI package) predates the specification and
is never used.
"""

from __future__ import annotations

import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "infra" / "compose-spec.json"
ENV_EXAMPLE = ROOT / "infra" / "env.example"
GEN_ENV = ROOT / "infra" / "gen-env.sh"
PROMETHEUS_CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = ROOT / "infra" / "grafana" / "provisioning" / "datasources"
SEAWEED_TEMPLATE = ROOT / "infra" / "seaweedfs" / "s3-identities.json.template"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, $VAR; $$ escapes.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|API_KEY|ACCESS_KEY|_AUTH$")
GPU_SERVICES = {"airflow-worker-gpu", "model-server-gpu"}
WARM = ["python", "-m", "flywheel.airflow.warm"]  # flywheel/airflow/warm.py: forked tasks start warm


def airflow_args(argv: list[str]) -> list[str]:
    """The `airflow` arguments of a container or native command (either run warm or not)."""
    if argv[:3] == WARM or (Path(argv[0]).name.startswith("python") and argv[1:3] == WARM[1:]):
        return argv[3:]
    return argv[1:] if Path(argv[0]).name == "airflow" else argv


AIRFLOW_COMMANDS = {
    "airflow-api-server": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery",
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


class MissingVariable(KeyError):
    """A ${VAR:?...} variable is not set, as `docker compose` would report."""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style interpolation of one string."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        is_set, non_empty = value is not None, bool(value)
        if op in (":?", "?"):
            if not (non_empty if op == ":?" else is_set):
                raise MissingVariable(name)
            return value or ""
        if op in (":-", "-"):
            return value if (non_empty if op == ":-" else is_set) else arg
        if op in (":+", "+"):
            return arg if (non_empty if op == ":+" else is_set) else ""
        return value or ""

    return INTERPOLATION.sub(substitute, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)


def references(text: str) -> Iterator[re.Match[str]]:
    for match in INTERPOLATION.finditer(text):
        if not match["escaped"]:
            yield match


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def image_reference_ok(image: str) -> bool:
    """name:tag (optionally @digest), with a tag that is not 'latest'."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return bool(tag) and tag != "latest" and "$" not in tag


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The file as written (anchors and merge keys resolved, no interpolation)."""
    with COMPOSE_FILE.open() as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .env produced by infra/gen-env.sh, outside the work tree."""
    target = tmp_path_factory.mktemp("genenv") / ".env"
    subprocess.run(["bash", str(GEN_ENV), str(target)], check=True, capture_output=True, timeout=60)
    return target


@pytest.fixture(scope="module")
def generated_env(env_file: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def resolved(raw: dict[str, Any], generated_env: dict[str, str]) -> dict[str, Any]:
    """The file as `docker compose` sees it with the generated .env (no other variables)."""
    result: dict[str, Any] = interpolate_tree(raw, generated_env)
    return result


@pytest.fixture(scope="module")
def services(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(resolved["services"])


@pytest.fixture(scope="module")
def one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait on with service_completed_successfully."""
    deps = [service.get("depends_on") for service in services.values()]
    return {
        target
        for dep_map in deps
        if isinstance(dep_map, dict)
        for target, dep in dep_map.items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }


# ---------------------------------------------------------------------------
# the Compose Specification
# ---------------------------------------------------------------------------


def test_schema_is_the_compose_specification() -> None:
    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks", "secrets", "configs"} <= set(schema["properties"])
    jsonschema.Draft7Validator.check_schema(schema)


def test_validates_against_compose_spec_schema(resolved: dict[str, Any]) -> None:
    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_validation_would_catch_a_mistake(resolved: dict[str, Any]) -> None:
    """Guard against a schema that accepts anything."""
    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    broken = {
        **resolved,
        "services": {**resolved["services"], "redis": {**resolved["services"]["redis"], "helthcheck": {}}},
    }
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


# ---------------------------------------------------------------------------
# images, ports, health, dependencies
# ---------------------------------------------------------------------------


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service, f"{name}: no image name (built images are named and tagged too)"
        assert image_reference_ok(service["image"]), f"{name}: image {service['image']!r} is not pinned"
        args = (service.get("build") or {}).get("args") or {}
        for arg, value in args.items():
            if arg.endswith("_IMAGE"):
                assert image_reference_ok(str(value)), f"{name}: build arg {arg}={value!r} is not pinned"


def dockerfile_base_images(dockerfile: Path) -> Iterator[str]:
    """Base images a Dockerfile can build from: literal FROMs and ARG defaults used by FROM."""
    text = dockerfile.read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    for ref in re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, flags=re.M):
        var = re.fullmatch(r"\$\{?(\w+)\}?", ref)
        yield defaults[var.group(1)] if var else ref


def test_dockerfile_base_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = ROOT / build["context"] / build.get("dockerfile", "Dockerfile")
        for base in dockerfile_base_images(dockerfile):
            assert image_reference_ok(base), f"{name}: {dockerfile.name} builds FROM unpinned {base!r}"


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name}: host networking publishes every port"
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} not bound to 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port!r} not bound to 127.0.0.1"


def test_every_service_has_a_healthcheck_or_is_one_shot(
    services: dict[str, dict[str, Any]], one_shots: set[str]
) -> None:
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart") == "no", f"one-shot {name} must not be restarted"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"


def test_depends_on_always_waits_on_a_condition(
    services: dict[str, dict[str, Any]], one_shots: set[str]
) -> None:
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must map each service to a condition"
        for target, dep in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = (dep or {}).get("condition")
            assert condition in {"service_healthy", "service_completed_successfully"}, (
                f"{name} -> {target}: {condition}"
            )
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), (
                    f"{name} waits for {target}, which has no healthcheck"
                )
            if not service.get("profiles"):
                assert not services[target].get("profiles"), (
                    f"{name} (always on) depends on profiled {target}"
                )


def test_named_volumes_are_declared_and_bind_mounts_exist(
    resolved: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(resolved.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared at top level"


def test_built_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    built = 0
    for name, service in services.items():
        build = service.get("build")
        if not build:
            continue
        assert isinstance(build, dict), f"{name}: give build a context and a dockerfile"
        context = ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {context} is missing"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: Dockerfile missing"
        built += 1
    assert built >= 4


def copy_sources(dockerfile: Path) -> Iterator[str]:
    """Sources of COPY/ADD instructions that read the build context (not --from)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in re.findall(r"^(?:COPY|ADD)\s+(.+)$", text, flags=re.M):
        words = line.split()
        if any(word.startswith("--from") for word in words):
            continue
        yield from [word for word in words if not word.startswith("--")][:-1]


def test_dockerfile_copy_sources_exist(services: dict[str, dict[str, Any]]) -> None:
    """A literal COPY source must exist (an empty folder is not in a clone); globs may match nothing."""
    for name, service in services.items():
        build = service.get("build")
        if not build:
            continue
        context = ROOT / build["context"]
        for source in copy_sources(context / build.get("dockerfile", "Dockerfile")):
            if not re.search(r"[*?\[]", source):
                path = context / source
                assert path.exists() and (path.is_file() or any(path.iterdir())), (
                    f"{name}: COPY {source} is missing or empty"
                )


def test_model_server_serves_the_bentofile_service() -> None:
    bentofile = yaml.safe_load((ROOT / "serving" / "bentofile.yaml").read_text())
    cmd = re.search(r"^CMD\s+(\[.*?\])\s*$", (ROOT / "infra" / "Dockerfile.serving").read_text(), re.M | re.S)
    assert cmd, "Dockerfile.serving has no exec-form CMD"
    argv = yaml.safe_load(cmd[1].replace("\\\n", " "))
    assert argv[:3] == ["bentoml", "serve", bentofile["service"]]


# ---------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------


def mask_references(text: str) -> str:
    """Replace each ${...} with <<NAME>> and each $$ with a marker, for literal-secret scans."""
    return INTERPOLATION.sub(lambda m: "\x01" if m["escaped"] else f"<<{m['braced'] or m['named']}>>", text)


def test_secret_environment_values_come_from_env_file(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        for key, value in environment_of(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"<<\w+>>", mask_references(value)), (
                    f"{name}: {key} holds a literal value"
                )


def test_no_literal_credentials_anywhere(raw: dict[str, Any]) -> None:
    for text in strings(raw):
        masked = mask_references(text)
        for userinfo in re.findall(r"://[^/@\s]*:([^@\s]*)@", masked):
            assert re.fullmatch(r"<<\w+>>", userinfo), f"literal password in URL: {text!r}"
        for value in re.findall(r"password=([^,\s]*)", masked, flags=re.I):
            assert re.fullmatch(r"<<\w+>>", value), f"literal password: {text!r}"
        for value in re.findall(r"--password[ =]+(\S+)", masked):
            assert re.fullmatch(r"\"?(<<\w+>>|\x01\{\w+\})\"?", value), f"literal password: {text!r}"


def test_secret_variables_are_required_never_defaulted(raw: dict[str, Any]) -> None:
    for text in strings(raw):
        for match in references(text):
            name = match["braced"] or match["named"]
            if SECRET_NAME.search(name):
                assert match["op"] == ":?", f"${{{name}}} must be written ${{{name}:?...}} (no default)"


def test_committed_s3_identities_hold_placeholders_only() -> None:
    text = SEAWEED_TEMPLATE.read_text()
    keys = re.findall(r'"(?:accessKey|secretKey)":\s*"([^"]*)"', text)
    assert keys and all(re.fullmatch(r"__[A-Z0-9_]+__", key) for key in keys)


# ---------------------------------------------------------------------------
# .env generation and documentation
# ---------------------------------------------------------------------------


def required_variables(raw: dict[str, Any]) -> set[str]:
    return {m["braced"] for text in strings(raw) for m in references(text) if m["op"] in (":?", "?")}


def test_gen_env_sets_every_required_variable(raw: dict[str, Any], generated_env: dict[str, str]) -> None:
    missing = {name for name in required_variables(raw) if not generated_env.get(name)}
    assert not missing, f"infra/gen-env.sh does not set {sorted(missing)}"


def test_gen_env_writes_private_random_secrets_and_never_overwrites(env_file: Path, tmp_path: Path) -> None:
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    again = tmp_path / ".env"
    subprocess.run(["bash", str(GEN_ENV), str(again)], check=True, capture_output=True, timeout=60)
    first, second = env_file.read_text(), again.read_text()
    password = re.compile(r"^POSTGRES_PASSWORD=(\S+)$", re.M)
    assert password.findall(first) != password.findall(second), "secrets are not random"
    refused = subprocess.run(["bash", str(GEN_ENV), str(again)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "not overwriting" in refused.stderr
    assert again.read_text() == second


def test_env_example_documents_every_variable_without_values(raw: dict[str, Any]) -> None:
    text = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.M))
    used = {m["braced"] or m["named"] for s in strings(raw) for m in references(s)}
    assert not used - documented, f"infra/env.example lacks {sorted(used - documented)}"
    for name in required_variables(raw):
        line = re.search(rf"^{name}=(.*)$", text, flags=re.M)
        assert line, f"{name} is required but not listed as a variable in env.example"
        assert line[1].split("#", 1)[0].strip() == "", f"env.example gives {name} a value"


# ---------------------------------------------------------------------------
# the stack's shape
# ---------------------------------------------------------------------------


def test_airflow_components_share_the_common_anchor(raw: dict[str, Any]) -> None:
    assert "x-airflow-common" in raw
    assert re.search(r"^x-airflow-common: &airflow-common$", COMPOSE_FILE.read_text(), flags=re.M)
    common = raw["x-airflow-common"]
    assert common["build"]["dockerfile"] == "infra/Dockerfile.airflow"
    for name, command in AIRFLOW_COMMANDS.items():
        service = raw["services"][name]
        assert service["image"] == common["image"], f"{name} does not use the common Airflow image"
        assert airflow_args(service["command"])[0] == command
    assert "FROM ${AIRFLOW_IMAGE}" in (ROOT / "infra" / "Dockerfile.airflow").read_text()
    assert common["build"]["args"]["AIRFLOW_IMAGE"] == "apache/airflow:3.3.2-python3.11"


def test_gpu_services_live_in_the_gpu_profile(services: dict[str, dict[str, Any]]) -> None:
    assert GPU_SERVICES <= set(services)
    for name, service in services.items():
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
            "devices"
        )
        if name in GPU_SERVICES:
            assert service.get("profiles") == ["gpu"], f"{name} must only start with --profile gpu"
            assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
            assert service["build"]["args"]["TORCH_VARIANT"] == "cuda", f"{name} would get torch +cpu"
        else:
            assert not devices and not service.get("profiles"), f"{name} belongs to the default CPU stack"


def test_prometheus_scrapes_the_model_server_and_grafana_reads_prometheus() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    model = jobs["model-server"]
    assert model.get("metrics_path", "/metrics") == "/metrics"
    names = {name for sd in model.get("dns_sd_configs", []) for name in sd["names"]}
    targets = {t for sc in model.get("static_configs", []) for t in sc["targets"]}
    assert "model-server" in names or "model-server:3000" in targets
    datasources = [
        ds for f in GRAFANA_DATASOURCES.glob("*.yml") for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    assert any(ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" for ds in datasources)


# ---------------------------------------------------------------------------
# compose == native production profile (flywheel.core.profiles, flywheel.stack.launcher)
# ---------------------------------------------------------------------------


@pytest.fixture()
def compose_settings(services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch):
    """The Settings a Flywheel process inside the compose stack builds from its environment."""
    from flywheel.core.config import Settings

    for key in list(__import__("os").environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    for key, value in environment_of(services["airflow-worker"]).items():
        if key.startswith("FLYWHEEL_"):
            monkeypatch.setenv(key, value)
    return Settings()


def test_compose_airflow_env_is_what_the_native_profile_sets(
    services: dict[str, dict[str, Any]], compose_settings
) -> None:
    """Executor, metadata DB, broker, result backend, queues: the same values as
    ``flywheel up --profile production`` derives, for every Airflow container."""
    from flywheel.core.config import Profile
    from flywheel.core.profiles import airflow_production_env, production_env

    assert compose_settings.profile is Profile.PRODUCTION
    expected = airflow_production_env(compose_settings) | production_env(compose_settings)
    expected.pop("FLYWHEEL_PRODUCTION__POSTGRES_URL")  # airflow-init alone holds the admin URL
    for name in [*AIRFLOW_COMMANDS, "airflow-init", "airflow-worker-gpu"]:
        env = environment_of(services[name])
        drift = {key: (env.get(key), value) for key, value in expected.items() if env.get(key) != value}
        assert not drift, f"{name} differs from flywheel.core.profiles: {drift}"
    init_url = environment_of(services["airflow-init"])["FLYWHEEL_PRODUCTION__POSTGRES_URL"]
    assert init_url.startswith("postgresql://postgres:") and init_url.endswith("@postgres:5432/postgres")


def test_compose_mlflow_runs_the_native_backend_and_artifact_store(
    services: dict[str, dict[str, Any]], compose_settings
) -> None:
    from flywheel.core.profiles import database_name
    from flywheel.stack import launcher as stack

    env = environment_of(services["mlflow"])
    assert env["MLFLOW_BACKEND_STORE_URI"] == stack.mlflow_backend_store_uri(compose_settings)
    native = stack.get_service("mlflow").command(compose_settings)
    assert native[native.index("--artifacts-destination") + 1] == env["MLFLOW_ARTIFACTS_DESTINATION"]
    # Both run MLflow's basic-auth app; no database URI (a password) on either command line.
    assert Path(native[0]).name == "mlflow" and native[1:4] == ["server", "--app-name", "basic-auth"]
    entrypoint = (ROOT / "infra" / "mlflow" / "entrypoint.sh").read_text()
    assert 'exec mlflow server --app-name basic-auth "$@"' in entrypoint
    assert services["mlflow"]["command"][0] == "--host"
    assert not any(part.startswith(("postgresql", "sqlite")) for part in [*native, *services["mlflow"]["command"]])
    assert env["MLFLOW_AUTH_DATABASE_URI"].endswith("/" + database_name(compose_settings, "mlflow_auth"))


def test_compose_commands_are_the_native_commands(
    services: dict[str, dict[str, Any]], compose_settings
) -> None:
    """Each Airflow container runs the subcommand the native stack runs (the image's
    entrypoint is `airflow`); workers listen on the queues the settings name."""
    from flywheel.stack import launcher as stack

    for name, subcommand in AIRFLOW_COMMANDS.items():
        native_name = "airflow-worker-1" if name == "airflow-worker" else name
        native = stack.get_service(native_name).command(compose_settings)
        assert airflow_args(native)[0] == airflow_args(services[name]["command"])[0] == subcommand
        # the components that fork task processes run warm in both (flywheel/airflow/warm.py)
        warm = subcommand in stack.WARM_COMPONENTS
        assert (native[1:3] == WARM[1:]) == warm == (services[name]["command"][:3] == WARM), name
    native_worker = airflow_args(stack.get_service("airflow-worker-1").command(compose_settings))
    worker = airflow_args(services["airflow-worker"]["command"])
    assert native_worker[:2] == worker[:2] == ["celery", "worker"]

    def queues(argv: list[str]) -> str:
        return argv[argv.index("--queues") + 1]

    assert queues(worker) == compose_settings.production.default_queue
    assert queues(native_worker) == compose_settings.production.default_queue
    assert queues(services["airflow-worker-gpu"]["command"]) == compose_settings.production.gpu_queue


def test_airflow_image_installs_the_cluster_policy_the_native_stack_installs() -> None:
    dockerfile = (ROOT / "infra" / "Dockerfile.airflow").read_text()
    assert re.search(
        r"^COPY .*infra/airflow/airflow_local_settings\.py /opt/airflow/config/airflow_local_settings\.py$",
        dockerfile, flags=re.M,
    )
    assert "flywheel.airflow.policy" in (ROOT / "infra" / "airflow" / "airflow_local_settings.py").read_text()


def test_airflow_init_provisions_with_the_native_code(services: dict[str, dict[str, Any]]) -> None:
    script = services["airflow-init"]["command"][-1]
    assert script.index("python -m flywheel.stack.provision") < script.index("airflow db migrate")
    assert services["mlflow"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_compose_runs_as_many_cpu_workers_as_the_settings_name(
    services: dict[str, dict[str, Any]], compose_settings
) -> None:
    replicas = int(services["airflow-worker"]["deploy"]["replicas"])
    assert replicas >= 2
    assert len(compose_settings.production.celery_workers) == replicas


def test_grafana_provisions_the_model_server_dashboard(services: dict[str, dict[str, Any]]) -> None:
    import json

    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["grafana"]["volumes"]}
    provider_dir = ROOT / mounts["/etc/grafana/provisioning/dashboards"]
    providers = [p for f in provider_dir.glob("*.yml") for p in yaml.safe_load(f.read_text())["providers"]]
    dashboards = ROOT / mounts[providers[0]["options"]["path"]]
    uids = {ds["uid"] for f in GRAFANA_DATASOURCES.glob("*.yml") for ds in yaml.safe_load(f.read_text())["datasources"]}
    boards = [json.loads(f.read_text()) for f in dashboards.glob("*.json")]
    assert boards, "no dashboard to provision"
    exprs = []
    for board in boards:
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, f"{board['title']}/{panel['title']}: unknown datasource"
            exprs += [t["expr"] for t in panel["targets"]]
    # BentoML 1.4 service metrics (namespace bentoml_service) and the scrape job of prometheus.yml
    assert any("bentoml_service_request_total" in e for e in exprs)
    assert any("bentoml_service_request_duration_seconds_bucket" in e for e in exprs)
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert all(job in jobs for e in exprs for job in re.findall(r'job="([^"]+)"', e))


def test_evidently_ui_serves_the_workspace_the_monitoring_dag_writes(
    services: dict[str, dict[str, Any]], compose_settings
) -> None:
    from flywheel.monitoring.drift import workspace_path

    ui = services["evidently-ui"]
    argv = [*ui["entrypoint"], *ui["command"]]
    assert argv[:2] == ["evidently", "ui"]
    assert argv[argv.index("--workspace") + 1] == str(workspace_path(compose_settings))
    assert ui["image"] == services["airflow-worker"]["image"]  # same evidently version as the DAG's
    assert "flywheel-home:/var/lib/flywheel" in ui["volumes"]
    assert "flywheel-home:/var/lib/flywheel" in services["airflow-worker"]["volumes"]


def test_prometheus_scrapes_the_monitoring_exporter_and_grafana_charts_its_metrics(
    services: dict[str, dict[str, Any]],
) -> None:
    import json

    from flywheel.monitoring.exporter import NAMESPACE, summary_samples
    from tests.unit.test_exporter import SUMMARY

    exporter = services["exporter"]
    assert exporter["image"] == services["airflow-worker"]["image"]  # the code that writes the summaries
    argv = [*exporter["entrypoint"], *exporter["command"]]
    assert argv[:2] == ["flywheel", "exporter"]
    env = environment_of(exporter)
    assert not [key for key in env if key.startswith("FLYWHEEL_PRODUCTION__")], "the exporter reads S3 only"
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    targets = {t for sc in jobs["flywheel-exporter"]["static_configs"] for t in sc["targets"]}
    assert targets == {f"exporter:{argv[argv.index('--port') + 1]}"}
    # Every flywheel metric a dashboard queries is one the exporter writes for a contract summary.
    exported = {s.name for s in summary_samples("m", SUMMARY)}
    exported |= {f"{NAMESPACE}_{name}" for name in ("up", "models", "read_duration_seconds", "scrape_errors_total")}
    boards = [json.loads(f.read_text()) for f in (ROOT / "infra" / "grafana" / "dashboards").glob("*.json")]
    queried = {name for board in boards for panel in board["panels"] for target in panel["targets"]
               for name in re.findall(r"\bflywheel_[a-z0-9_]+", target["expr"])}
    assert {"flywheel_monitoring_drift_drift_share", "flywheel_monitoring_performance_metric_drop",
            "flywheel_monitoring_alert"} <= queried
    assert queried <= exported, f"dashboards query unknown metrics: {sorted(queried - exported)}"


def test_compose_runs_a_dask_cluster_the_tasks_reach_over_tls(
    services: dict[str, dict[str, Any]], compose_settings
) -> None:
    """Scheduler + 2 workers (the Airflow image), mutual TLS from the dask-tls-init volume, no
    published port; Airflow tasks are configured for that scheduler (flywheel.core.config.ComputeSettings)."""
    compute = compose_settings.compute
    assert compute.engine == "dask" and compute.scheduler_address == "tls://dask-scheduler:8786"
    scheduler, worker, init = services["dask-scheduler"], services["dask-worker"], services["dask-tls-init"]
    assert init["entrypoint"] == ["python", "-m", "flywheel.compute.tls"]
    assert worker["deploy"]["replicas"] >= 2
    assert worker["command"][:2] == ["worker", compute.scheduler_address]
    for name, service in (("dask-scheduler", scheduler), ("dask-worker", worker)):
        assert service["image"] == services["airflow-worker"]["image"], name
        assert not service.get("ports"), f"{name} must not publish a port"
        flags = service["command"]
        for flag, path in (("--tls-ca-file", compute.tls_ca_file), ("--tls-cert", compute.tls_cert),
                           ("--tls-key", compute.tls_key)):
            assert flags[flags.index(flag) + 1] == str(path), (name, flag)
        assert environment_of(service)["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "true"
        assert not any(SECRET_NAME.search(k) for k in environment_of(service)), f"{name} holds a secret"
    assert scheduler["command"][scheduler["command"].index("--protocol") + 1] == "tls"
    mounts = {m.split(":")[1] for m in services["airflow-worker"]["volumes"] if isinstance(m, str)}
    assert str(compute.tls_ca_file.parent) in mounts
