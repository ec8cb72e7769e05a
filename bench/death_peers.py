"""The tools the worker-death benchmark watches, each started on the same broker, and how each
one says that a worker is up, down or no longer listed.

The peers run from their own venvs, built by `make peers` (see the Makefile), so none of their
dependencies mix with ours:

- Flower (PyPI, 2.x): `flower_worker_online{worker}`, once with its defaults and once with
  `--purge_offline_workers=5` (a worker Celery's rule calls dead and not seen for 5 s is
  dropped from /metrics).
- celery-exporter (PyPI, 1.2.1, OvalMoney's): `celery_workers{namespace}`, a count of the
  workers that answered a broadcast ping (5 s ping timeout, every 5 s). It has no per-worker
  series, so "down" is the count falling below the number of live workers.
- danihodovic's celery-exporter, run from its source (`cli.py`): `celery_worker_up{hostname}`,
  labelled by the host part of the worker's name, with its default `--worker-timeout` (300 s)
  and with `--worker-timeout 5`.
- taskmedic: `taskmedic_celery_worker_up{cluster,worker}`, whatever exporter code is checked out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ROOT, Proc
from bench.metrics_text import samples

FLOWER_VENV = ROOT / ".venv-peer-flower"
CE_VENV = ROOT / ".venv-peer-celery-exporter"
CE_SRC = CE_VENV / "celery-exporter-1.2.1"
DANI_VENV = ROOT / ".venv-peer-danihodovic"
DANI_SRC = DANI_VENV / "src"

# A worker's reading from one page: its value, or None when the page does not list it.
Reading = Callable[[str, str], float | None]


@dataclass(frozen=True)
class Watcher:
    """One tool watching the broker: how to start it and how to read a worker from /metrics."""

    name: str
    metric: str
    # How to start it: (broker URL, port, log path) -> process.
    start: Callable[[str, int, Path], Proc]
    read: Reading
    # False for a count with no per-worker series: "no longer listed" does not apply.
    per_worker: bool = True
    # What answers 200 once it serves (danihodovic's /metrics takes 2 s: it inspects workers).
    ready_path: str = "/metrics"


def _labelled(metric: str, label: str, value_of: Callable[[str], str]) -> Reading:
    def read(text: str, hostname: str) -> float | None:
        want = value_of(hostname)
        for (name, labels), v in samples(text).items():
            if name == metric and dict(labels).get(label) == want:
                return v
        return None

    return read


def _count(metric: str) -> Reading:
    def read(text: str, hostname: str) -> float | None:
        found = [v for (name, _), v in samples(text).items() if name == metric]
        return sum(found) if found else None

    return read


def _host_part(hostname: str) -> str:
    return hostname.split("@", 1)[-1]


def _flower(purge: int | None) -> Callable[[str, int, Path], Proc]:
    def start(broker: str, port: int, log_path: Path) -> Proc:
        argv = [
            str(FLOWER_VENV / "bin" / "celery"),
            f"--broker={broker}",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--db={log_path.with_suffix('.db')}",
        ]
        if purge is not None:
            argv.append(f"--purge_offline_workers={purge}")
        return Proc(argv, log_path, cwd=log_path.parent)

    return start


def _celery_exporter(broker: str, port: int, log_path: Path) -> Proc:
    argv = [str(CE_VENV / "bin" / "python"), "-m", "celery_exporter"]
    argv += ["--broker-url", broker, "--listen-address", f"127.0.0.1:{port}"]
    return Proc(argv, log_path, env={"PYTHONPATH": str(CE_SRC)}, cwd=log_path.parent)


def _danihodovic(timeout: int | None) -> Callable[[str, int, Path], Proc]:
    def start(broker: str, port: int, log_path: Path) -> Proc:
        argv = [str(DANI_VENV / "bin" / "python"), str(DANI_SRC / "cli.py")]
        argv += ["--broker-url", broker, "--host", "127.0.0.1", "--port", str(port)]
        if timeout is not None:
            argv += ["--worker-timeout", str(timeout)]
        return Proc(argv, log_path, env={"PYTHONPATH": str(DANI_SRC)}, cwd=DANI_SRC)

    return start


def taskmedic_start(config_for: Callable[[str, int], Path]) -> Callable[[str, int, Path], Proc]:
    """`taskmedic exporter` on the config `config_for(broker, port)` writes."""

    def start(broker: str, port: int, log_path: Path) -> Proc:
        config = config_for(broker, port)
        return Proc(
            [sys.executable, "-m", "healer.cli", "exporter", "--config", str(config)], log_path
        )

    return start


TASKMEDIC_CLUSTER = "deathbench"


def taskmedic_watcher(config_for: Callable[[str, int], Path]) -> Watcher:
    def read(text: str, hostname: str) -> float | None:
        for (name, labels), v in samples(text).items():
            d = dict(labels)
            if (
                name == "taskmedic_celery_worker_up"
                and d.get("worker") == hostname
                and d.get("cluster") == TASKMEDIC_CLUSTER
            ):
                return v
        return None

    return Watcher("taskmedic", "taskmedic_celery_worker_up", taskmedic_start(config_for), read)


def peers() -> tuple[list[Watcher], list[str]]:
    """The peers whose venv is built, and a sentence for each one skipped."""
    found: list[Watcher] = []
    skipped: list[str] = []
    if (FLOWER_VENV / "bin" / "celery").exists():
        flower_read = _labelled("flower_worker_online", "worker", lambda h: h)
        found.append(Watcher("Flower", "flower_worker_online", _flower(None), flower_read))
        found.append(
            Watcher(
                "Flower --purge_offline_workers=5", "flower_worker_online", _flower(5), flower_read
            )
        )
    else:
        skipped.append(f"Flower: no {FLOWER_VENV.name} (run `make peers`)")
    if (CE_SRC / "celery_exporter").is_dir():
        found.append(
            Watcher(
                "celery-exporter 1.2.1",
                "celery_workers",
                _celery_exporter,
                _count("celery_workers"),
                per_worker=False,
            )
        )
    else:
        skipped.append(f"celery-exporter: no {CE_VENV.name} (run `make peers`)")
    if (DANI_SRC / "cli.py").exists() and (DANI_VENV / "bin" / "python").exists():
        dani_read = _labelled("celery_worker_up", "hostname", _host_part)
        found.append(
            Watcher(
                "danihodovic celery-exporter",
                "celery_worker_up",
                _danihodovic(None),
                dani_read,
                ready_path="/health",
            )
        )
        found.append(
            Watcher(
                "danihodovic --worker-timeout 5",
                "celery_worker_up",
                _danihodovic(5),
                dani_read,
                ready_path="/health",
            )
        )
    else:
        skipped.append(
            "danihodovic/celery-exporter: no source in "
            f"{DANI_SRC} (set CELERY_EXPORTER_SRC to a checkout or a bare git "
            "dir of github.com/danihodovic/celery-exporter and run `make peers`)"
        )
    return found, skipped
