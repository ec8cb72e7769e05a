"""`--healer`: the demo's second half, the healer with demo rules and, where installed, the
real Prometheus and Alertmanager closing the loop (alert -> webhook -> remediation).

Prometheus evaluates the repository's own alerting rules (rules/prometheus/, `for:` shortened
to seconds) and Alertmanager calls the healer's webhook with a bearer token from a file, as in
deploy/alertmanager/alertmanager.yml. Without the two binaries the demo evaluates the same
alerts on /metrics and posts them to the healer itself (demo.alerts).

The rules work together: a killed worker also stops the cache refreshes (nobody runs beat's
task), so the worker is restarted first, within seconds, and the cache refresh that follows
~30 s later finds a worker to run it; without that it would fail after its 20 s wait with
"no result within 20s (state PENDING)".
"""

from __future__ import annotations

import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from demo import configs, leftovers

# The repository's alerting rules; absent from an installed wheel, present for `make demo`.
SHIPPED_RULES = Path(__file__).resolve().parents[1] / "rules" / "prometheus" / "taskmedic.rules.yml"
FOR = "5s"

RULES: dict[str, Any] = {
    "rules": [
        {
            # The worker is gone: start it again through the running demo (demo.faults).
            "name": "demo-restart-worker",
            "match": {"alertname": "TaskmedicCeleryWorkerDown", "cluster": configs.CLUSTER},
            "cooldown": "10s",
            "limit": {"count": 5, "per": "1h"},
            "steps": [
                {
                    "name": "start the Celery worker again",
                    "script": {
                        "argv": [sys.executable, "-m", "demo", "fault", "restart-worker"],
                        "timeout": "40s",
                    },
                }
            ],
        },
        {
            # beat is stopped: run its job once from the healer, through the Celery app.
            "name": "demo-refresh-tree-status",
            "match": {"alertname": "TaskmedicStaleRows", "check": "tree_status_cache"},
            "cooldown": "1m",
            "limit": {"count": 3, "per": "1h"},
            "steps": [
                {
                    "name": "rebuild the status cache",
                    "celery": {
                        "app": configs.CLUSTER,
                        "task": "demo.update_tree_status_cache",
                        "wait": "20s",
                    },
                }
            ],
        },
        {
            # The worker was killed mid-import: fail the timelines the check confirms as lost.
            "name": "demo-fail-stuck-timelines",
            "match": {"alertname": "TaskmedicOrphanTasks", "check": "timelines"},
            "cooldown": "30s",
            "steps": [
                {
                    "name": "mark orphaned timelines as failed",
                    "repair": {
                        "check": "timelines",
                        "sql": "UPDATE timeline SET status = 'fail', status_text ="
                        " 'taskmedic: its Celery task was lost', updated_at = now()"
                        " WHERE id = ANY(%(keys)s) AND status = 'processing'",
                    },
                }
            ],
        },
        {
            # A record without its action: a person approves the exact plan in the console.
            "name": "demo-cancel-records-without-action",
            "match": {"alertname": "TaskmedicOrphanRows", "check": "records_without_action"},
            "approval": True,
            "steps": [
                {
                    "name": "write the missing cancel action",
                    "repair": {
                        "check": "records_without_action",
                        "sql": "INSERT INTO task_action (id, action) SELECT id, 'cancel'"
                        " FROM task_record WHERE id = ANY(%(keys)s) ON CONFLICT DO NOTHING",
                    },
                }
            ],
        },
    ]
}


@dataclass(frozen=True)
class HealerFiles:
    token_file: Path
    password_file: Path
    rules_file: Path
    listen: str

    @property
    def base_url(self) -> str:
        return f"http://{self.listen}"


def write_healer_files(directory: Path, listen: str) -> HealerFiles:
    """The token (readable by this user only) and the demo's remediation rules."""
    token_file = directory / "healer-token"
    token_file.touch(mode=0o600)
    token_file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    # The console's user `demo`, who approves; Alertmanager's token may not.
    password_file = directory / "healer-password"
    password_file.touch(mode=0o600)
    password_file.write_text(secrets.token_urlsafe(12) + "\n", encoding="utf-8")
    rules_file = directory / "healer-rules.yaml"
    rules_file.write_text(
        "# The demo's remediation rules (see rules/healer/ for the packs to copy).\n"
        + yaml.safe_dump(demo_rules(directory), sort_keys=False),
        encoding="utf-8",
    )
    return HealerFiles(token_file, password_file, rules_file, listen)


def demo_rules(directory: Path) -> dict[str, Any]:
    """RULES, with the restart step naming this demo's folder (several demos may run)."""
    rules: dict[str, Any] = yaml.safe_load(yaml.safe_dump(RULES))
    for rule in rules["rules"]:
        for step in rule["steps"]:
            if "script" in step:
                # A script step gets a minimal environment: name the demo's state folder.
                step["script"]["argv"] += ["--dir", str(directory)]
                step["script"]["env"] = {leftovers.STATE_ENV: str(leftovers.state_dir())}
    return rules


def healer_section(files: HealerFiles, journal_dsn: str) -> dict[str, Any]:
    """The `healer:` section of the demo's taskmedic.yaml."""
    return {
        "listen": files.listen,
        "journal": {"dsn": journal_dsn},
        "auth": {
            "bearer_token_file": str(files.token_file),
            "alertmanager_roles": ["post_alerts", "read"],
            "users": [
                {"name": "demo", "password_file": str(files.password_file), "roles": ["approve"]}
            ],
        },
        "rules": [str(files.rules_file)],
        # The demo stops each child within 2 s: the healer's drain must fit.
        "shutdown_grace": "1s",
        "approval_timeout": "30m",
    }


def alerting_binaries() -> tuple[str, str] | None:
    """Prometheus and Alertmanager executables, when both are installed."""
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if prometheus and alertmanager and SHIPPED_RULES.exists():
        return prometheus, alertmanager
    return None


def write_prometheus(directory: Path, exporter: str, healer: str, alertmanager: str) -> Path:
    """prometheus.yml and the shipped alerting rules with `for:` cut to seconds."""
    rules = yaml.safe_load(SHIPPED_RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    rules_path = directory / "taskmedic.rules.yml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(rules_path)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {"job_name": "taskmedic-exporter", "static_configs": [{"targets": [exporter]}]},
            {"job_name": "taskmedic-healer", "static_configs": [{"targets": [healer]}]},
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def write_alertmanager(directory: Path, files: HealerFiles) -> Path:
    """Every alert to the healer's webhook, with the bearer token file and resolved alerts."""
    config = {
        "route": {
            "receiver": "taskmedic-healer",
            "group_by": ["alertname", "check", "cluster", "worker"],
            "group_wait": "2s",
            "group_interval": "5s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "taskmedic-healer",
                "webhook_configs": [
                    {
                        "url": f"{files.base_url}/alerts",
                        "send_resolved": True,
                        "max_alerts": 100,
                        "http_config": {
                            "authorization": {
                                "type": "Bearer",
                                "credentials_file": str(files.token_file),
                            }
                        },
                    }
                ],
            }
        ],
    }
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
