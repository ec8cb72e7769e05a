"""The demo's healer config and rules load with every reference resolved."""

from __future__ import annotations

from pathlib import Path

CHECKS = ("tree_status_cache", "timelines", "records_without_action")


def test_demo_healer_config_and_rules_load_with_every_reference_resolved(tmp_path: Path) -> None:
    """`--healer` writes a taskmedic.yaml and rules the healer accepts: the Celery app, the
    checks and the token file they name all exist."""
    from demo import configs, healing
    from healer.config import load_healer_config
    from healer.rules import load_rules

    files = healing.write_healer_files(tmp_path, "127.0.0.1:9809")
    assert files.token_file.stat().st_mode & 0o077 == 0, "the token is readable by others"
    config_file = configs.write_config(
        tmp_path / "taskmedic.yaml",
        dsn="postgresql://postgres:@/taskmedic_demo?host=/tmp/x",
        broker="redis+socket:///tmp/x/redis.socket?virtual_host=0",
        listen="127.0.0.1:9808",
        healer=healing.healer_section(files, "postgresql://postgres:@/journal?host=/tmp/x"),
    )
    config = load_healer_config(config_file.path)
    assert [c.name for c in config.checks] == list(CHECKS)
    assert config.healer.auth.secret_token() == files.token_file.read_text().strip()
    rules = load_rules(config)
    assert {r.name for r in rules} == {r["name"] for r in healing.RULES["rules"]}
