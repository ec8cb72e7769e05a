"""What the tests of deploy/ share: the environment the example config reads."""

from __future__ import annotations

from pathlib import Path


def secrets_env(tmp_path: Path) -> dict[str, str]:
    """The environment and secret files the example config refers to."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "timesketch-write-dsn").write_text(
        "postgresql://ts_rw:dsn-secret-1@127.0.0.1/timesketch"
    )
    for name in ("ibex-db-password", "journal-password", "healer-token", "healer-ops-password"):
        (creds / name).write_text(f"file-secret-{name}\n")
    return {
        "CREDENTIALS_DIRECTORY": str(creds),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "TIMESKETCH_DB_PASSWORD": "env-secret-timesketch",
        "TIMESKETCH_REDIS_PASSWORD": "env-secret-redis",
    }
