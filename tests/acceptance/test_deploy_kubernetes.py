"""deploy/kubernetes/ is what `kubectl apply -k` accepts, and it runs taskmedic as configured.

Every core manifest validates, offline, against the Kubernetes API schemas of a pinned
version (kubernetes-validate ships them). The Prometheus Operator's kinds are checked against
the shape the operator reads, and the PrometheusRule's rules go through promtool and must be
the repository's own alerting rules. The ConfigMap's taskmedic.yaml goes through taskmedic's
`config check`, each container's arguments through taskmedic's own parser, and the probes and
ports are compared with what the processes really serve and where they listen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.base.structure_only import structure_only
from exporter.base.types import split_listen
from exporter.config import Config
from exporter.web import create_app as exporter_app
from healer.app import create_app as healer_app
from healer.config import load_healer_config
from tests.services import ROOT, need_or_skip
from tests.support.deploy_files import assert_runs_taskmedic, check_structure_only, run

K8S = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "rules" / "prometheus" / "taskmedic.rules.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
PROMTOOL = "/usr/bin/promtool"
# The Kubernetes version whose API schemas the manifests must satisfy (strictly: an unknown
# field is an error, as `kubectl apply --validate=strict` makes it).
KUBERNETES_VERSION = "1.33"
CONFIG_PATH = "/etc/taskmedic/taskmedic.yaml"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                yield path, doc


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    found: list[dict[str, Any]] = spec.get("initContainers", []) + spec["containers"]
    return found


WORKLOADS = [
    ("Deployment", "taskmedic-exporter"),
    ("Deployment", "taskmedic-healer"),
    ("DaemonSet", "taskmedic-agent"),
]


def taskmedic_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        one("ConfigMap", "taskmedic-config")["data"]["taskmedic.yaml"]
    )
    return data


def write_config_files(directory: Path, *, agents: bool = True) -> Path:
    """The ConfigMap's files as the pods see them in /etc/taskmedic; returns taskmedic.yaml."""
    for name, text in one("ConfigMap", "taskmedic-config")["data"].items():
        (directory / name).write_text(text, encoding="utf-8")
    config = directory / "taskmedic.yaml"
    if not agents:
        data = taskmedic_yaml()
        del data["agents"]
        config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config


# --- the Kubernetes API's own schemas ------------------------------------------------------


def test_kustomization_lists_every_manifest_once() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in manifest_files()} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    assert kustomization["namespace"] == "taskmedic"


def test_every_core_manifest_validates_against_the_pinned_kubernetes_schemas() -> None:
    checked = []
    for path, doc in documents():
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            used = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc}")
        # The schemas of exactly the pinned version, not an older fallback.
        assert used == KUBERNETES_VERSION
        checked.append(doc["kind"])
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "DaemonSet", "NetworkPolicy"} <= set(
        checked
    )


def test_the_schema_check_catches_a_misspelt_field() -> None:
    """The validation above can fail: an unknown field in a Deployment is an error."""
    deployment = yaml.safe_load(yaml.safe_dump(one("Deployment", "taskmedic-healer")))
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_manifest_is_in_the_taskmedic_namespace() -> None:
    for path, doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "taskmedic", path.name


# --- the Prometheus Operator's kinds ---------------------------------------------------------

SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)(ms|s|m|h|d|w|y))+)$"}
# The fields of monitoring.coreos.com/v1 these manifests use, as the operator's CRDs type them.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def test_the_service_monitor_has_the_operator_shape_and_scrapes_exporter_and_healer() -> None:
    monitor = one("ServiceMonitor", "taskmedic")
    jsonschema.validate(monitor, SERVICE_MONITOR)
    spec = monitor["spec"]
    scraped = [
        service
        for _, service in documents()
        if service["kind"] == "Service"
        and service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
        and selects(spec["selector"], service["metadata"].get("labels", {}))
    ]
    assert sorted(s["metadata"]["name"] for s in scraped) == [
        "taskmedic-exporter",
        "taskmedic-healer",
    ]
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in scraped:
            assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector's verdict on `labels` (In and NotIn, as used here)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        inside = labels.get(expr["key"]) in expr.get("values", [])
        if (expr["operator"] == "In") != inside:
            return False
    return True


def test_the_prometheus_rule_has_the_operator_shape() -> None:
    jsonschema.validate(one("PrometheusRule", "taskmedic"), PROMETHEUS_RULE)


def test_the_prometheus_rule_is_exactly_the_shipped_alerting_rules() -> None:
    """Its groups cannot drift from rules/prometheus/taskmedic.rules.yml."""
    shipped = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert one("PrometheusRule", "taskmedic")["spec"]["groups"] == shipped["groups"]


def test_promtool_accepts_the_rules_of_the_prometheus_rule(tmp_path: Path) -> None:
    need_or_skip(Path(PROMTOOL).exists(), PROMTOOL)
    extracted = tmp_path / "taskmedic.rules.yml"
    groups = one("PrometheusRule", "taskmedic")["spec"]["groups"]
    extracted.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    out = run([PROMTOOL, "check", "rules", str(extracted)])
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {alerts} rules found" in out.stdout + out.stderr


# --- the taskmedic config and the processes that read it -------------------------------------


def test_the_configmap_config_passes_config_check(tmp_path: Path) -> None:
    check_structure_only(write_config_files(tmp_path))


def test_the_configmap_holds_no_secret_and_names_only_mounted_secret_files() -> None:
    """Passwords and tokens are files of the Secret, mounted where the config reads them."""
    text = one("ConfigMap", "taskmedic-config")["data"]["taskmedic.yaml"]
    files: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert key not in ("password", "bearer_token"), key
                if key.endswith("_file"):
                    files.append(value)
                elif key == "dsn":
                    assert ":" not in value.split("@")[0].removeprefix("postgresql://"), value
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(text))
    assert files
    for kind, name in WORKLOADS:
        workload = one(kind, name)
        secret_volumes = {v["name"] for v in pod_spec(workload)["volumes"] if "secret" in v}
        for container in containers(workload):
            mounts = [
                m["mountPath"] for m in container["volumeMounts"] if m["name"] in secret_volumes
            ]
            for path in files:
                assert any(path.startswith(m + "/") for m in mounts), (name, path)
    assert not [d for _, d in documents() if d["kind"] == "Secret"], "secrets are not shipped"


@pytest.mark.parametrize(
    ("kind", "name", "container"),
    [(k, n, c["name"]) for k, n in WORKLOADS for c in containers(one(k, n))],
)
def test_each_container_runs_a_real_taskmedic_subcommand(
    kind: str, name: str, container: str
) -> None:
    """The image's entrypoint is `taskmedic`; each container's args parse with its own CLI."""
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["taskmedic"]' in dockerfile
    (spec,) = [c for c in containers(one(kind, name)) if c["name"] == container]
    assert spec["image"] == "taskmedic:latest"
    assert "command" not in spec, "the image's entrypoint runs taskmedic"
    args = [a.replace("$(NODE_NAME)", "node-1") for a in spec["args"]]
    assert_runs_taskmedic(args, CONFIG_PATH)
    mounts = {m["mountPath"]: m for m in spec["volumeMounts"]}
    assert mounts["/etc/taskmedic"]["readOnly"] is True


def test_every_container_has_resources_and_runs_unprivileged() -> None:
    for kind, name in WORKLOADS:
        workload = one(kind, name)
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        # The Dockerfile's user: a uid the policy can verify without running the image.
        assert "useradd --system --uid 10001" in DOCKERFILE.read_text(encoding="utf-8")
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod.get("hostPID", False) is False
        assert pod.get("hostNetwork", False) is False
        for container in containers(workload):
            resources = container["resources"]
            assert set(resources) == {"requests", "limits"}, container["name"]
            assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]


def test_services_ports_match_container_ports_and_the_configured_listen_ports() -> None:
    config = taskmedic_yaml()
    for section, name in (("exporter", "taskmedic-exporter"), ("healer", "taskmedic-healer")):
        host, port = split_listen(config[section]["listen"])
        # Inside a pod the loopback is the pod's own: Services and probes use the pod IP.
        assert host == "0.0.0.0"
        (container,) = [c for c in pod_spec(one("Deployment", name))["containers"]]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert list(named.values()) == [port]
        service = one("Service", name)
        assert (
            service["spec"]["selector"]
            == one("Deployment", name)["spec"]["selector"]["matchLabels"]
        )
        for p in service["spec"]["ports"]:
            assert p["port"] == port
            assert named[p["targetPort"]] == port


def test_the_healer_runs_two_replicas_behind_its_probes() -> None:
    healer = one("Deployment", "taskmedic-healer")
    assert healer["spec"]["replicas"] == 2
    (container,) = pod_spec(healer)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Room for healer.shutdown_grace before the kubelet kills it.
    grace = pod_spec(healer)["terminationGracePeriodSeconds"]
    assert grace > float(taskmedic_yaml()["healer"]["shutdown_grace"].removesuffix("s"))


def test_each_agent_consumes_the_queue_of_its_own_node() -> None:
    agent = one("DaemonSet", "taskmedic-agent")
    (container,) = pod_spec(agent)["containers"]
    args = container["args"]
    assert args[args.index("--queue") + 1] == "$(NODE_NAME)"
    (env,) = [e for e in container["env"] if e["name"] == "NODE_NAME"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "ports" not in container
    state_dir = taskmedic_yaml()["agents"]["state_dir"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == state_dir]
    (volume,) = [v for v in pod_spec(agent)["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


async def test_probes_hit_paths_the_exporter_and_healer_serve(tmp_path: Path) -> None:
    """Each probe's path is a GET route of the application that container serves."""
    # The `agents:` section is not the exporter's or healer's to read.
    config_file = write_config_files(tmp_path, agents=False)
    with structure_only():
        healer_config = load_healer_config(config_file)
    served = {
        "taskmedic-exporter": exporter_app(Config()),
        "taskmedic-healer": healer_app(healer_config),
    }
    for name, app in served.items():
        gets = {
            r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource
        }
        (container,) = pod_spec(one("Deployment", name))["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] in gets, (name, probe)
    for endpoint in one("ServiceMonitor", "taskmedic")["spec"]["endpoints"]:
        for app in served.values():
            assert endpoint["path"] in {
                r.resource.canonical for r in app.router.routes() if r.resource
            }


def test_network_policies_let_only_alertmanager_and_prometheus_in() -> None:
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}

    def peers(policy: dict[str, Any]) -> tuple[set[str], set[int]]:
        names: set[str] = set()
        ports: set[int] = set()
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert peer["namespaceSelector"]["matchLabels"] == monitoring
                names.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
            ports |= {p["port"] for p in rule["ports"]}
        return names, ports

    listen = taskmedic_yaml()
    healer = one("NetworkPolicy", "taskmedic-healer")
    exporter = one("NetworkPolicy", "taskmedic-exporter")
    agent = one("NetworkPolicy", "taskmedic-agent")
    assert peers(healer) == (
        {"alertmanager", "prometheus"},
        {split_listen(listen["healer"]["listen"])[1]},
    )
    assert peers(exporter) == ({"prometheus"}, {split_listen(listen["exporter"]["listen"])[1]})
    assert agent["spec"]["ingress"] == []
    for policy, workload in (
        (healer, one("Deployment", "taskmedic-healer")),
        (exporter, one("Deployment", "taskmedic-exporter")),
        (agent, one("DaemonSet", "taskmedic-agent")),
    ):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"] == workload["spec"]["selector"]
