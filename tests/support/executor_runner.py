"""A healer reduced to its executor, as a real separate process for crash tests.

    python -m tests.support.executor_runner DSN --lease 2 --owner NAME

Prints `ready` once it claims; SIGTERM stops it with `stop(grace)`; `kill -9` is the crash.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from exporter.config import Config
from healer.executor import Executor
from healer.metrics import HealerMetrics


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--owner", default=None)
    args = parser.parse_args(argv)
    executor = Executor(
        args.dsn,
        Config(),
        HealerMetrics(),
        owner=args.owner,
        lease=args.lease,
        poll_interval=args.poll,
    )
    await executor.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await executor.stop(args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
