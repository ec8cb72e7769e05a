"""What a running demo started, on disk, so that the next demo can clean up after a killed one.

Each demo keeps `<state dir>/<its pid>.json` (the state dir is `/tmp/taskmedic-demo-<uid>/`,
or $TASKMEDIC_DEMO_STATE): its own pid and start time, its folder, and every process it started
with that process's start time. A demo removes its file once everything is stopped. A file
whose demo is gone (killed with `kill -9`, or its machine lost power mid-shutdown) is a
leftover: the next demo kills the processes it names that are still the same processes (same
pid AND same start time, so a recycled pid is never hit), and any process of ours still
running inside its folder, then removes the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoState", "clean_leftovers", "live_demos", "proc_start", "state_dir"]

STATE_ENV = "TASKMEDIC_DEMO_STATE"


class StateDirUnsafe(RuntimeError):
    """The state folder is not a private folder of this user (a shared /tmp can hold traps)."""


def state_dir() -> Path:
    """The per-user folder of state files, created private (0700) if missing."""
    path = Path(
        os.environ.get(STATE_ENV) or Path(tempfile.gettempdir()) / f"taskmedic-demo-{os.getuid()}"
    )
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise StateDirUnsafe(
            f"{path} is not a folder that only this user can write; remove it or set {STATE_ENV}"
        )
    return path


def proc_start(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot), None when no such live process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except OSError:  # no /proc (not Linux): existence is all we can learn
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _same_process(pid: int, start: int | None) -> bool:
    now = proc_start(pid)
    return now is not None and (start is None or now == start)


@dataclass
class DemoState:
    """The state file of the running demo; saved (atomically) on every change."""

    dir: Path
    keep: bool
    path: Path = field(init=False)
    data: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.path = state_dir() / f"{pid}.json"
        self.data = {
            "pid": pid,
            "start": proc_start(pid),
            "dir": str(self.dir),
            "keep": self.keep,
            "processes": {},
            "dirs": [],
        }
        self.save()

    def add_process(self, name: str, pid: int) -> None:
        self.data["processes"][name] = [pid, proc_start(pid)]
        self.save()

    def add_dir(self, path: str | Path) -> None:
        self.data["dirs"].append(str(path))
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _read_states() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(state_dir().glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("pid"), int):
            found.append((path, data))
    return found


def live_demos() -> list[dict[str, Any]]:
    """The state of every demo of this user that is running now."""
    return [d for _, d in _read_states() if _same_process(d["pid"], d.get("start"))]


def processes_inside(folder: str) -> list[int]:
    """Live processes of this user whose working directory or command line is in `folder`."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (cwd == folder or cwd.startswith(folder + "/") or folder in cmdline) and proc_start(
            int(entry.name)
        ) is not None:
            found.append(int(entry.name))
    return found


def _kill_all(pids: set[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(proc_start(p) is not None for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def clean_leftovers() -> list[str]:
    """Stop and remove what demos that are no longer running left behind; says what it did."""
    notes = []
    for path, data in _read_states():
        if data["pid"] == os.getpid() or _same_process(data["pid"], data.get("start")):
            continue
        pids = {
            int(pid)
            for pid, start in data.get("processes", {}).values()
            if _same_process(int(pid), start)
        }
        folder = str(data.get("dir") or "")
        for inside in [folder, *data.get("dirs", [])]:
            if inside and os.path.isabs(inside) and inside != "/":
                pids.update(processes_inside(inside))
        _kill_all(pids)
        removed = []
        if not data.get("keep") and folder and Path(folder).is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        for extra in data.get("dirs", []):
            if Path(extra).is_dir():
                shutil.rmtree(extra, ignore_errors=True)
                removed.append(extra)
        path.unlink(missing_ok=True)
        notes.append(
            f"cleaned up after an earlier demo (pid {data['pid']}, no longer running): "
            f"stopped {len(pids)} process(es)"
            + (f", removed {', '.join(removed)}" if removed else "")
        )
    return notes
