"""examples/deploy/ checked against the code it deploys: the Dockerfile's files, commands and healthcheck; the
Kubernetes manifests' ports, probes, config mount, secrets and Redis address; the config as the pods see it
(through a ConfigMap's symlinks); the Grafana dashboard's series against a live /metrics exposition; the CI
workflow's `llm-proxy validate` step. Nothing here needs Docker or a cluster."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from proxy.cli import build_parser
from proxy.config import load_config
from proxy.fronts.http_app import build_app
from proxy.fronts.prometheus import EngineCollector
from proxy.templates import PromptTemplates
from proxy.types import ChatRequest
from tests.http_server import engine_from_yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
K8S = DEPLOY / "kubernetes"


# --- Dockerfile ------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical = re.sub(r"\\\n\s*", " ", text)
    steps = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last = max(index for index, (instruction, _) in enumerate(steps) if instruction == "FROM")
    return steps[last:]


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments)


def test_the_image_is_slim_and_runs_as_a_non_root_user():
    stage = final_stage()
    assert re.fullmatch(r"python:3\.1[1-9]-slim", stage[0][1])
    users = [arguments for instruction, arguments in stage if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any("useradd" in arguments and users[-1] in arguments for _, arguments in stage)


def test_every_file_the_dockerfile_copies_exists_and_the_package_it_installs_is_this_one():
    for instruction, arguments in dockerfile():
        if instruction == "COPY" and not arguments.startswith("--from"):
            *sources, _ = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    installs = [
        arguments for instruction, arguments in final_stage() if instruction == "RUN" and "pip install" in arguments
    ]
    assert installs and project["name"] in installs[0].split()
    # The wheel carries config/, templates/ and schemas/ (force-include): the build stage must copy them.
    copied = {arguments.split()[0] for instruction, arguments in dockerfile() if instruction == "COPY"}
    assert {"config", "templates", "schemas", "proxy", "pyproject.toml"} <= copied


def test_the_command_is_a_real_llm_proxy_command_on_the_exposed_port():
    stage = dict(final_stage())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (entrypoint,) = exec_form(stage["ENTRYPOINT"])
    assert entrypoint in project["scripts"]
    args = build_parser().parse_args(exec_form(stage["CMD"]))
    assert (args.command, args.transport, args.host, args.port) == ("serve", "http", "0.0.0.0", 8085)
    assert stage["EXPOSE"] == str(args.port)


def test_the_healthcheck_polls_healthz_with_what_the_slim_image_has():
    check = dict(final_stage())["HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    assert all(option in options for option in ("--interval", "--timeout", "--retries"))
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]  # no curl in a slim image
    compile(argv[2], "<healthcheck>", "exec")
    assert "http://127.0.0.1:8085/healthz" in argv[2]
    assert "/healthz" in routes()


# --- Kubernetes ------------------------------------------------------------------------------------------


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if doc]


def kind(name: str, wanted: str, metadata_name: str | None = None) -> dict[str, Any]:
    (found,) = [
        doc
        for doc in documents(name)
        if doc["kind"] == wanted and (metadata_name is None or doc["metadata"]["name"] == metadata_name)
    ]
    return found


MINIMAL = "version: 1\nproviders: {demo: {type: mock}}\nmodels: {default: {targets: [{provider: demo, model: d}]}}\n"


def routes() -> set[str]:
    """The paths the proxy's HTTP app serves (before the MCP mount)."""
    return {route.path for route in build_app(engine_from_yaml(MINIMAL)).routes}


def proxy_container() -> dict[str, Any]:
    (container,) = kind("deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def pod_env(**secrets: str) -> dict[str, str]:
    """The environment the proxy container gets, with the Secret's example values."""
    secret = kind("secret.example.yaml", "Secret")["stringData"]
    env = {}
    for variable in proxy_container()["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "llm-proxy-keys" and ref["key"] in secret, variable
            env[variable["name"]] = secrets.get(ref["key"], secret[ref["key"]])
    return env


def test_every_manifest_parses_and_kustomize_names_only_existing_files():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    for name in kustomization["resources"]:
        assert documents(name), name
    (generator,) = kustomization["configMapGenerator"]
    for name in generator["files"]:
        assert (K8S / name).is_file(), name
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True  # updated in place: hot reload
    assert documents("secret.example.yaml")
    assert "secret.example.yaml" not in kustomization["resources"]  # keys never come from git


def test_three_replicas_serve_the_configs_port_with_probes_on_healthz_and_readyz():
    deployment = kind("deployment.yaml", "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    container = proxy_container()
    args = build_parser().parse_args(container["args"])
    config = load_config(K8S / "proxy.yaml", env=pod_env())
    assert args.port == config.server.http.port and args.host == "0.0.0.0"
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert {"/readyz", "/healthz"} <= routes()
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
    assert config.server.grace_period < spec["template"]["spec"]["terminationGracePeriodSeconds"]
    service = kind("deployment.yaml", "Service", "llm-proxy")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_the_config_is_the_configmap_mounted_as_a_directory():
    container = proxy_container()
    volumes = {
        volume["name"]: volume
        for volume in kind("deployment.yaml", "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    (mount,) = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    (generator,) = kustomization["configMapGenerator"]
    assert volumes[mount["name"]]["configMap"]["name"] == generator["name"]
    config_arg = build_parser().parse_args(container["args"]).config
    assert Path(config_arg).parent == Path(mount["mountPath"]) and Path(config_arg).name in generator["files"]


def test_the_pods_get_every_variable_the_config_needs_and_redis_where_the_service_is():
    text = (K8S / "proxy.yaml").read_text(encoding="utf-8")
    needed = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(?::-[^}]*)?\}", text))
    assert needed <= set(pod_env())
    config = load_config(K8S / "proxy.yaml", env=pod_env())
    assert all(provider.enabled for provider in config.providers.values())
    assert config.state.backend == "redis" and config.cache.backend == "redis"
    assert config.state.expected_replicas == kind("deployment.yaml", "Deployment")["spec"]["replicas"]
    service = kind("redis.yaml", "Service", "llm-proxy-redis")
    assert config.state.url is not None
    assert config.state.url.reveal() == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    redis = kind("redis.yaml", "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= redis["metadata"]["labels"].items()
    assert redis["spec"]["containers"][0]["resources"]["requests"].keys() >= {"cpu", "memory"}
    for secret_value in kind("secret.example.yaml", "Secret")["stringData"].values():
        assert not secret_value.startswith("sk-")


def test_through_the_kubelets_symlinks_the_config_loads_and_its_template_renders(tmp_path):
    # What the kubelet mounts: files in a timestamped directory, `..data` pointing at it, each key a symlink.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = kustomization["configMapGenerator"][0]["files"]
    stamped = tmp_path / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir()
    for name in files:
        (stamped / name).write_bytes((K8S / name).read_bytes())
    (tmp_path / "..data").symlink_to(stamped.name)
    for name in files:
        (tmp_path / name).symlink_to(Path("..data") / name)
    config = load_config(tmp_path / "proxy.yaml", env=pod_env())
    rendered = PromptTemplates.from_config(config).render("summarize", {"text": "The quarter went well."})
    assert "The quarter went well." in str(rendered)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (kustomize renders offline)")
def test_kustomize_renders_the_configmap_the_deployment_mounts():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(rendered) if doc}
    config_map = objects[("ConfigMap", "llm-proxy-config")]  # no hash suffix: updated in place
    assert config_map["data"]["proxy.yaml"] == (K8S / "proxy.yaml").read_text(encoding="utf-8")
    assert "summarize.j2" in config_map["data"]
    deployment = objects[("Deployment", "llm-proxy")]
    assert deployment["metadata"]["namespace"] == "llm-proxy"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "llm-proxy-config"}} in volumes


# --- Grafana -------------------------------------------------------------------------------------------------


async def exposed_series() -> set[str]:
    engine = engine_from_yaml(
        """
        version: 1
        providers:
          demo: {type: mock, limits: {requests_per_minute: 1, max_wait: 0s}}
          bad: {type: mock, mock: {fault: {status: 503}}}
        models:
          default: {targets: [{provider: demo, model: d}]}
          broken: {targets: [{provider: bad, model: b}]}
        """.replace("\n        ", "\n")
    )
    await engine.complete(ChatRequest.from_prompt("hello", temperature=0))
    await engine.complete(ChatRequest.from_prompt("hello", temperature=0))  # a cache hit
    for model in ("default", "broken"):  # a rate-limit rejection, an upstream error
        with pytest.raises(Exception):  # noqa: B017 - any failure will do
            await engine.complete(ChatRequest.from_prompt("again", model=model))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    text = generate_latest(registry).decode()
    await engine.aclose()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


async def test_every_series_the_dashboard_queries_is_exposed_by_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "llm-proxy-dashboard.json").read_text(encoding="utf-8"))
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    expressions = [target["expr"] for panel in panels for target in panel["targets"]]
    queried = {name for expr in expressions for name in re.findall(r"\bllm_proxy_[a-z_]+", expr)}
    exposed = await exposed_series()
    assert queried and queried <= exposed, queried - exposed
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24 for panel in dashboard["panels"])
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in panels)
    assert [variable["name"] for variable in dashboard["templating"]["list"]] == ["datasource"]


# --- CI --------------------------------------------------------------------------------------------------------


def test_the_workflow_validates_the_config_on_pull_requests():
    workflow = yaml.safe_load((DEPLOY / "github-actions" / "validate-config.yml").read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    (job,) = workflow["jobs"].values()
    env = {**workflow.get("env", {}), **job.get("env", {})}
    commands = [shlex.split(step["run"]) for step in job["steps"] if "run" in step]
    (validate,) = [argv for argv in commands if argv[:2] == ["llm-proxy", "validate"]]
    args = build_parser().parse_args([part.replace("$CONFIG", env["CONFIG"]) for part in validate[1:]])
    assert args.paths == [env["CONFIG"]]
    for path in triggers["pull_request"]["paths"]:
        assert (ROOT / path.removesuffix("/**")).exists()
    # With only the workflow's environment (no keys), the config is valid: providers are just disabled.
    variables = {name: value for name, value in env.items() if name != "CONFIG"}
    config = load_config(ROOT / env["CONFIG"], env=variables)
    assert config.state.backend == "redis"
