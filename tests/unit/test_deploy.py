"""The deployment files (Dockerfile, Kubernetes base, Compose) are valid and agree with the worker.

Offline: hadolint lints the Dockerfiles, kubernetes-validate checks the built-in kinds against the
OpenAPI schemas of a pinned Kubernetes version, and the KEDA ScaledObject is checked against a schema
vendored from KEDA's CRD (tests/unit/deploy_schemas/). The kustomize base is plain (resources only),
so the build is its listed files; `kubectl kustomize` confirms that where it is installed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rig.config import RigSettings
from streams.plane.source import SourceSettings
from tests.conftest import REPO

KUBERNETES_VERSION = "1.32.0"
"""The Kubernetes API the manifests must be valid for (the oldest minor release still maintained
upstream when this was written); kubernetes-validate ships its schemas."""

BASE = REPO / "deploy" / "kubernetes" / "base"
DOCKERFILES = (REPO / "Dockerfile", REPO / "deploy" / "docker" / "bundle.Dockerfile")
KEDA_SCHEMA = Path(__file__).parent / "deploy_schemas" / "keda-scaledobject-v1alpha1.schema.json"
SETTING_NAMES = frozenset(f"RIG_{name.upper()}" for name in RigSettings.model_fields)


# -- reading the files ---------------------------------------------------------------------------------
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def image_env(dockerfile: Path) -> dict[str, str]:
    """The ENV variables a Dockerfile sets (`KEY=value` form)."""
    env: dict[str, str] = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ENV":
            # dict() is typed to take [key, value] lists; update() only (key, value) tuples.
            env.update(dict(pair.split("=", 1) for pair in rest.split()))
    return env


def render_base() -> list[dict[str, Any]]:
    """What `kubectl kustomize deploy/kubernetes/base` outputs, for a base that only lists resources."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    extra = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not extra, f"the base uses {extra}: teach render_base to apply them, or move them to an overlay"
    documents = []
    for name in kustomization["resources"]:
        path = BASE / name
        assert path.is_file(), f"{name} listed in kustomization.yaml is not a file of the base"
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [doc for doc in documents if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def worker_env(documents: list[dict[str, Any]]) -> dict[str, str]:
    """The RIG_* environment the ConfigMap and the Secret give the worker container."""
    env = dict(one(documents, "ConfigMap")["data"])
    env.update(one(documents, "Secret")["stringData"])
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> RigSettings:
    """RigSettings as a process with exactly this RIG_* environment reads them."""
    for name in [name for name in os.environ if name.startswith("RIG_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return RigSettings()


def worker_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def deploy_texts() -> Iterator[tuple[Path, str]]:
    """Every deployment file a user reads or runs, comments and docs included."""
    for path in sorted((REPO / "deploy").rglob("*")):
        if path.is_file():
            yield path, path.read_text()
    for path in (REPO / "Dockerfile", REPO / "docker-compose.yml"):
        yield path, path.read_text()


# -- the image -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_dockerfile_passes_hadolint_without_findings(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(dockerfile)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_runs_the_worker_as_non_root_with_a_healthcheck_on_healthz() -> None:
    steps = instructions(REPO / "Dockerfile")
    base = [rest for keyword, rest in steps if keyword == "FROM"]
    # The C extensions are built in a stage with a compiler, on the same Debian and Python.
    assert base == ["python:3.11-bookworm AS build", "python:3.11-slim-bookworm"]
    user = [rest for keyword, rest in steps if keyword == "USER"][-1]
    assert int(user.split(":")[0]) != 0 and int(user.split(":")[1]) != 0
    (healthcheck,) = [rest for keyword, rest in steps if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "RIG_WEB_PORT" in healthcheck
    (command,) = [rest for keyword, rest in steps if keyword == "CMD"]
    assert json.loads(command) == ["rig-worker"], "exec form: the worker must be PID 1 to get SIGTERM"
    env = image_env(REPO / "Dockerfile")
    assert env["RIG_WEB_BIND"] == "0.0.0.0", "the probes reach the web server from outside the container"
    workdir = [rest for keyword, rest in steps if keyword == "WORKDIR"][-1]
    assert workdir == env["RIG_HOME"], "the working directory is the writable RIG_HOME"


def test_the_build_context_holds_every_file_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "the matcher below knows no exceptions"

    def ignored(path: str) -> bool:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, pattern)
            or (pattern.startswith("**/") and fnmatch.fnmatch(part, pattern[3:]))
            for pattern in patterns
            for prefix, part in zip(prefixes, parts, strict=True)
        )

    sources = []
    for keyword, rest in instructions(REPO / "Dockerfile"):
        if keyword == "COPY" and "--from=" not in rest:  # not from another stage
            words = [word for word in rest.split() if not word.startswith("--")]
            sources += words[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    for state in (".venv", ".rig", ".git", "examples/synthetic_world/data", "tests"):
        assert ignored(state), f"{state} must stay out of the build context"


# -- the Kubernetes base -----------------------------------------------------------------------------------
def test_the_base_lists_every_manifest_of_its_folder() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    present = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize(
    "document",
    [doc for doc in render_base() if not doc["apiVersion"].startswith("keda.sh/")],
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_manifest_is_valid_for_the_pinned_kubernetes_version(document: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{document['kind']} at {error.json_path}: {error.message}")


def test_the_scaled_object_is_valid_for_kedas_schema() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    errors = [
        f"{e.json_path}: {e.message}" for e in validator.iter_errors(one(render_base(), "ScaledObject"))
    ]
    assert not errors


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_same_resources() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def key(doc: dict[str, Any]) -> str:
        return f"{doc['kind']}/{doc['metadata']['name']}"

    assert sorted(built, key=key) == sorted(render_base(), key=key)


def test_the_probes_ask_healthz_and_readyz_on_the_workers_web_port(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = render_base()
    settings = settings_from(worker_env(documents), monkeypatch)
    container = worker_container(documents)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.web_port
    assert settings.web_bind == "0.0.0.0"
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert http["port"] in (port["name"], settings.web_port)


def test_the_worker_runs_as_non_root_and_writes_only_to_volumes(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = render_base()
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    container = worker_container(documents)
    user = [rest for keyword, rest in instructions(REPO / "Dockerfile") if keyword == "USER"][-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0], "the image's user"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # What the worker writes (rig.feedback's join store, Faust's data folder, temporary files) is on
    # a writable volume; RIG_HOME is the image's.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    writable = {
        mount["mountPath"]
        for mount in container["volumeMounts"]
        if not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]]
    }
    settings = settings_from({**worker_env(documents), **image_env(REPO / "Dockerfile")}, monkeypatch)
    for path in (settings.home / "join", settings.home / "faust", Path("/tmp")):
        assert str(path) in writable, f"{path} is not on a writable volume"


def test_a_stop_gets_longer_than_the_open_batches_may_take() -> None:
    revoke = {field.name: field.default for field in dataclasses.fields(SourceSettings)}["revoke_timeout_s"]
    assert isinstance(revoke, float), "a default, not MISSING"
    pod = one(render_base(), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= revoke + 15


def test_the_scaled_object_scales_the_predict_group_up_to_the_partition_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    documents = render_base()
    settings = settings_from(worker_env(documents), monkeypatch)
    scaled = one(documents, "ScaledObject")["spec"]
    deployment = one(documents, "Deployment")
    assert scaled["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] == settings.topic_partitions
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["consumerGroup"] == settings.consumer_group("predict")
    assert metadata["topic"] == settings.topic("requests")
    assert metadata["bootstrapServersFromEnv"] in one(documents, "ConfigMap")["data"]
    assert metadata["offsetResetPolicy"] == "earliest", "the workers' auto.offset.reset"
    in_flight = settings.batch_max * settings.max_open_batches
    assert int(metadata["lagThreshold"]) > in_flight, "a healthy worker holds this much uncommitted"


def test_the_disruption_budget_and_the_service_select_the_worker_pods() -> None:
    documents = render_base()
    labels = one(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one(documents, "Deployment")["spec"]["selector"]["matchLabels"] == labels
    budget = one(documents, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"] == labels
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
    service = one(documents, "Service")["spec"]
    assert service["selector"] == labels
    assert [port["targetPort"] for port in service["ports"]] == [
        worker_container(documents)["ports"][0]["name"]
    ]


def test_the_configmap_and_secret_set_real_settings_to_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = render_base()
    env = worker_env(documents)
    assert set(env) <= SETTING_NAMES, f"not settings of rig/config.py: {set(env) - SETTING_NAMES}"
    assert all(str(value) for value in env.values()), "an empty value is a value, not 'unset'"
    assert {"RIG_METADATA_URL"} <= set(one(documents, "Secret")["stringData"])
    settings = settings_from(env, monkeypatch)
    for name, value in env.items():
        read = getattr(settings, name.removeprefix("RIG_").lower())
        assert read == type(read)(value), f"{name}={value!r} read as {read!r}"
    container = worker_container(documents)
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {
        one(documents, "ConfigMap")["metadata"]["name"],
        one(documents, "Secret")["metadata"]["name"],
    }


def test_every_rig_variable_the_deployment_files_name_is_a_setting() -> None:
    unknown = {
        f"{path.relative_to(REPO)}: {name}"
        for path, text in deploy_texts()
        for name in re.findall(r"\bRIG_[A-Z0-9_]*[A-Z0-9]\b", text)
        if name not in SETTING_NAMES
    }
    assert not unknown


# -- Compose ----------------------------------------------------------------------------------------------
def test_compose_runs_the_worker_image_on_healthy_services(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    assert {"kafka", "redis", "postgres", "worker"} <= set(services)
    worker = services["worker"]
    assert worker["build"] == "." and (REPO / "Dockerfile").is_file()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert worker["image"] == worker_container(render_base())["image"] == f"prediction-rig:{version}"
    for name, dependency in worker["depends_on"].items():
        assert dependency == {"condition": "service_healthy"}
        assert "healthcheck" in services[name], f"{name} has no healthcheck to wait for"
    env = {name: str(value) for name, value in worker["environment"].items()}
    assert set(env) <= SETTING_NAMES
    settings = settings_from({**image_env(REPO / "Dockerfile"), **env}, monkeypatch)
    assert settings.web_bind == "0.0.0.0"
    assert f"{settings.web_port}:{settings.web_port}" in worker["ports"]
    kafka = services["kafka"]["environment"]
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"DOCKER://{settings.kafka_bootstrap}" in advertised, "containers reach the broker there"
    assert "PLAINTEXT://127.0.0.1:9092" in advertised, "the host (make demo, rig) still reaches it"
    mounts = {volume.split(":")[1]: volume for volume in worker["volumes"]}
    assert str(settings.model_dir) in mounts and str(settings.feast_repo) in mounts
    assert worker["profiles"] == ["worker"], "`docker compose up -d` starts the services alone"


# -- Grafana ----------------------------------------------------------------------------------------------
GRAFANA_DASHBOARD = REPO / "deploy" / "grafana" / "rig-worker.json"
EXPOSED_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
"""The names Prometheus stores a metric family under, by its type."""


def grafana_queries(node: Any) -> Iterator[tuple[str, Any]]:
    """(PromQL, data source) of every panel target and query variable of a Grafana dashboard."""
    if isinstance(node, list):
        for item in node:
            yield from grafana_queries(item)
    elif isinstance(node, dict):
        query = node.get("expr", node.get("query") if node.get("type") == "query" else None)
        if query is not None:
            yield (query["query"] if isinstance(query, dict) else query), node.get("datasource")
        for value in node.values():
            yield from grafana_queries(value)


def test_the_grafana_dashboard_queries_only_metrics_the_worker_exports_on_its_data_source_variable() -> None:
    from prometheus_client import CollectorRegistry

    from streams.metrics import WorkerMetrics

    exported = {
        family.name + suffix
        for family in WorkerMetrics(CollectorRegistry()).registry.collect()
        for suffix in EXPOSED_SUFFIXES[family.type]
    }
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    queries = list(grafana_queries(dashboard))
    queried = {name for expr, _ in queries for name in re.findall(r"\brig_[a-z0-9_]+", expr)}

    assert len(queried) > 20 and queried <= exported, f"not exported: {sorted(queried - exported)}"
    assert {"type": "datasource", "query": "prometheus"}.items() <= dashboard["templating"]["list"][0].items()
    assert {json.dumps(source) for _, source in queries} == {'{"type": "prometheus", "uid": "${datasource}"}'}
