"""What the tests of deploy/ share: the environment the example config reads, the taskmedic
command line as a subprocess and in process, and the structure-only config check."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from healer.cli import build_parser
from tests.services import ROOT


def secrets_env(tmp_path: Path) -> dict[str, str]:
    """The environment and secret files the example config refers to."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "timesketch-write-dsn").write_text(
        "postgresql://ts_rw:dsn-secret-1@127.0.0.1/timesketch"
    )
    names = ("ibex-db-password", "journal-password", "healer-token", "healer-ops-password")
    for name in (*names, "agents-key"):
        (creds / name).write_text(f"file-secret-{name}\n")
    return {
        "CREDENTIALS_DIRECTORY": str(creds),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "TIMESKETCH_DB_PASSWORD": "env-secret-timesketch",
        "TIMESKETCH_REDIS_PASSWORD": "env-secret-redis",
    }


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, **kw)


def taskmedic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `taskmedic` command of this checkout, as a subprocess."""
    return run(
        [sys.executable, "-c", "import sys; from healer.cli import main; sys.exit(main())", *args],
        env={**os.environ, **(env or {})},
    )


def cli_error(args: list[str]) -> str | None:
    """None when taskmedic's own argument parser accepts `args`, else what it said."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exc:
            return err.getvalue() or f"exit status {exc.code}"
    if not callable(getattr(parsed, "func", None)):
        return f"{args} names a command group, not a command"
    return None


def assert_runs_taskmedic(args: list[str], config: str) -> None:
    """`args` (after the `taskmedic` entrypoint) is a real subcommand reading `config`."""
    problem = cli_error(args)
    assert problem is None, f"taskmedic {' '.join(args)}: {problem}"
    assert args[args.index("--config") + 1] == config


def check_structure_only(config: Path) -> None:
    """`taskmedic config check --structure-only` accepts `config` (agents: section included)."""
    out = taskmedic("config", "check", "--structure-only", "--config", str(config))
    shown = out.stdout + out.stderr
    assert out.returncode == 0, shown
    assert "structure valid" in out.stdout
