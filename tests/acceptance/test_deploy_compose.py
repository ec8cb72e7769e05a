"""deploy/compose/docker-compose.yml runs the whole loop, checked without Docker.

Docker's own `docker compose config` runs where the compose plugin is installed. Everywhere,
the file is validated against the Compose Specification's JSON Schema (as check-jsonschema
ships it), and its parts against what they start: every service's image or build, the files
it mounts, the taskmedic subcommands through taskmedic's own parser, its taskmedic.yaml
through `config check`, and the Prometheus and Alertmanager configs through promtool and
amtool, with targets that are the compose services and ports their processes listen on.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from exporter.base.types import split_listen
from tests.services import ROOT, need_or_skip
from tests.support.deploy_files import assert_runs_taskmedic, check_structure_only, run

COMPOSE = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
CONFIG_PATH = "/etc/taskmedic/taskmedic.yaml"
PROMTOOL = "/usr/bin/promtool"
AMTOOL = "/usr/bin/amtool"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def taskmedic_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "taskmedic.yaml").read_text(encoding="utf-8"))
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of the service's bind mounts (sources relative to the compose file)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = source
    return mounts


def test_docker_compose_accepts_the_file() -> None:
    """Docker's own reading of the file, where the compose plugin is installed."""
    docker = shutil.which("docker")
    if docker is None or run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("Docker's compose plugin is not installed (`docker compose` is unavailable)")
    out = run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_file_validates_against_the_compose_specification_schema() -> None:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose())]
    assert not problems


def test_the_schema_check_catches_a_misspelt_key() -> None:
    """The validation above can fail: an unknown service key is an error."""
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text(encoding="utf-8"))
    broken = compose()
    broken["services"]["healer"]["depend_on"] = broken["services"]["healer"].pop("depends_on")
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_every_service_has_an_image_and_existing_dependencies_and_files() -> None:
    named_volumes = set(compose().get("volumes", {}))
    for name, service in services().items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (COMPOSE / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else depends.keys():
            assert dependency in services(), (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), (name, source)
            else:
                assert source in named_volumes, (name, source)


def test_the_loop_has_every_part() -> None:
    assert {
        "postgres",
        "redis",
        "app",
        "exporter",
        "healer",
        "agent",
        "prometheus",
        "alertmanager",
    } <= set(services())
    # The app stand-in runs the demo's Celery worker with beat, in taskmedic's image.
    app = services()["app"]
    assert app["image"] == "taskmedic:latest"
    assert "celery -A demo.tasks worker --beat" in " ".join(app["command"])
    assert bind_mounts(app)["/opt/app/demo"] == "../../demo"
    assert app["environment"]["PYTHONPATH"] == "/opt/app"


@pytest.mark.parametrize("name", ["exporter", "healer-migrate", "healer", "agent"])
def test_each_taskmedic_service_runs_a_real_subcommand(name: str) -> None:
    service = services()[name]
    assert service["image"] == "taskmedic:latest"
    assert "entrypoint" not in service, "the image's entrypoint runs taskmedic"
    assert bind_mounts(service)[CONFIG_PATH] == "./taskmedic.yaml"
    assert_runs_taskmedic(service["command"], CONFIG_PATH)


def test_the_compose_config_passes_config_check(tmp_path: Path) -> None:
    for name in ("taskmedic.yaml", "healer-rules.yaml"):
        shutil.copy(COMPOSE / name, tmp_path / name)
    check_structure_only(tmp_path / "taskmedic.yaml")


def test_published_ports_are_where_exporter_and_healer_listen() -> None:
    config = taskmedic_yaml()
    for name in ("exporter", "healer"):
        host, port = split_listen(config[name]["listen"])
        assert host == "0.0.0.0"  # reached as <service>:<port> from the other containers
        (published,) = services()[name]["ports"]
        assert published == f"127.0.0.1:{port}:{port}"


def test_the_healer_reads_its_secrets_from_the_generated_volume() -> None:
    config = taskmedic_yaml()
    secret_files = [
        config["healer"]["auth"]["bearer_token_file"],
        config["healer"]["journal"]["password_file"],
        config["databases"]["app"]["password_file"],
    ]
    generator = " ".join(services()["secrets"]["command"])
    for path in secret_files:
        directory, name = path.rsplit("/", 1)
        assert directory == "/run/taskmedic-secrets"
        assert f'"{name}"' in generator
    for name in ("exporter", "healer", "agent", "alertmanager"):
        assert "secrets:/run/taskmedic-secrets:ro" in services()[name]["volumes"]
    postgres = services()["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD_FILE"] == config["databases"]["app"]["password_file"]


def test_promtool_accepts_the_compose_prometheus_config_and_its_targets(tmp_path: Path) -> None:
    need_or_skip(Path(PROMTOOL).exists(), PROMTOOL)
    prometheus = services()["prometheus"]
    mounts = bind_mounts(prometheus)
    # Laid out as the container sees it: the config and the rules it loads from rules/.
    (tmp_path / "rules").mkdir()
    for target, source in mounts.items():
        relative = target.removeprefix("/etc/prometheus/")
        shutil.copy(COMPOSE / source, tmp_path / relative)
    out = run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout + out.stderr

    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text(encoding="utf-8"))
    listen = taskmedic_yaml()
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    for name in ("exporter", "healer"):
        port = split_listen(listen[name]["listen"])[1]
        assert targets[f"taskmedic-{name}"] == [f"{name}:{port}"]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_amtool_accepts_the_compose_alertmanager_config() -> None:
    need_or_skip(Path(AMTOOL).exists(), AMTOOL)
    out = run([AMTOOL, "check-config", str(COMPOSE / "alertmanager.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((COMPOSE / "alertmanager.yml").read_text(encoding="utf-8"))
    (receiver,) = [r for r in config["receivers"] if r["name"] == "taskmedic-healer"]
    (webhook,) = receiver["webhook_configs"]
    port = split_listen(taskmedic_yaml()["healer"]["listen"])[1]
    assert webhook["url"] == f"http://healer:{port}/alerts"
    token = webhook["http_config"]["authorization"]["credentials_file"]
    assert token == taskmedic_yaml()["healer"]["auth"]["bearer_token_file"]
    assert bind_mounts(services()["alertmanager"])["/etc/alertmanager/alertmanager.yml"] == (
        "./alertmanager.yml"
    )
