"""`python -m bench [exporter] [healer] [logs] [deaths] [fanout] [--quick]` (`make bench`).

Runs the chosen benchmarks (all by default), each starting what it needs and stopping it, then
writes the figures to bench/results/<date>.json and prints the markdown for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.env import BenchEnv
from bench.harness import RESULTS, log

SUITES = ("exporter", "healer", "logs", "deaths", "fanout")


def _suite(name: str) -> Callable[[BenchEnv, bool], dict[str, Any]]:
    if name == "exporter":
        from bench import exporter_bench

        return exporter_bench.run
    if name == "healer":
        from bench import healer_bench

        return healer_bench.run
    if name == "deaths":
        from bench import deaths_bench

        return deaths_bench.run
    if name == "fanout":
        from bench import fanout_bench

        return fanout_bench.run
    from bench import logs_bench

    return logs_bench.run


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"{', '.join(SUITES)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    chosen = args.suites or list(SUITES)
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}: choose from {', '.join(SUITES)}")
    started = time.time()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "results": {},
        "errors": {},
    }
    report["load_average"] = {"start": os.getloadavg()}
    for name in chosen:
        log(f"=== {name} ===")
        t0 = time.monotonic()
        with BenchEnv() as env:
            try:
                report["results"][name] = _suite(name)(env, args.quick)
            except Exception as e:  # noqa: BLE001 - one failed suite must not hide the others
                traceback.print_exc()
                report["errors"][name] = f"{type(e).__name__}: {e}"
        log(f"=== {name} done in {time.monotonic() - t0:.0f}s ===")
    report["elapsed_s"] = round(time.time() - started, 1)
    report["load_average"]["end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(markdown(report))
    log(f"figures written to {path.relative_to(RESULTS.parent.parent)}")
    return 1 if report["errors"] else 0


def _tables(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["table"]] if isinstance(node.get("table"), str) else []
        for k, v in node.items():
            if k != "table":
                out += _tables(v)
        return out
    return []


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"### Run of {report['date']}",
        "",
        f"`{report['command']}` on {m['cpus']} cores ({m['cpu_model']}), "
        f"{m['memory_gib']} GiB, Python {m['python']}; took {report['elapsed_s']:.0f} s; "
        "load average (1 min) "
        f"{report['load_average']['start'][0]:.2f} at the start, "
        f"{report['load_average']['end'][0]:.2f} at the end.",
        "",
    ]
    for name, result in report["results"].items():
        lines.append(f"### {name}\n")
        lines += _tables(result)
    for name, err in report["errors"].items():
        lines.append(f"**{name} failed:** {err}\n")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
