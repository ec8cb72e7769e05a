"""A step's output from real `taskmedic agent` processes, read back through the log API and
`actions log` as people read it: every line a host printed starts with its host."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from healer.plan import HostsSpec, PlanStep, ScriptSpec
from tests.support.agents import AgentFleet
from tests.support.journal_helpers import StartExecutor, insert_action, plan, state_in
from tests.support.log_helpers import make_app

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def fleet(broker_url: str, journal_dsn: str, tmp_path: Path) -> Iterator[AgentFleet]:
    f = AgentFleet(broker_url, tmp_path, journal_dsn)
    yield f
    f.stop_all()


async def test_host_output_reads_as_tagged_lines_in_the_api(
    fleet: AgentFleet,
    journal_dsn: str,
    executors: StartExecutor,
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    """Two agents print two lines each (one to stderr): the text log shows each line with its
    host, `?host=` keeps one host's, and the action's JSON lists both host runs."""
    for host in ("app1", "app2"):
        await asyncio.to_thread(fleet.start, host)
    await executors(agents=fleet.settings)
    code = 'echo "first on $(cat /dev/null)me"; echo "to stderr" >&2; echo second'
    step = PlanStep(
        name="greet",
        kind="script",
        on=HostsSpec(hosts=["app1", "app2"], batch=None, tolerance=0, pause_after=[]),
        script=ScriptSpec(argv=["sh", "-c", code]),
    )
    action_id = await insert_action(journal_dsn, plan(step))
    row = await state_in(journal_dsn, action_id, "succeeded", "failed", timeout=30)
    assert row["state"] == "succeeded", row["reason"]

    client = await aiohttp_client(make_app(journal_dsn))
    text = await (await client.get(f"/api/actions/{action_id}/log")).text()
    # Every line is tagged; stdout and stderr are two pipes, so only their own order is kept.
    lines = text.splitlines()
    for host in ("app1", "app2"):
        mine = [line for line in lines if line.startswith(f"[{host}] ")]
        assert sorted(mine) == [f"[{host}] first on me", f"[{host}] second", f"[{host}] to stderr"]
    # The rest are the healer's own notes about the runs ("app1: sent to …"): untagged.
    system = await (
        await client.get(f"/api/actions/{action_id}/log", params={"stream": "system"})
    ).text()
    assert [line for line in lines if not line.startswith("[")] == system.splitlines(), text
    only = await (await client.get(f"/api/actions/{action_id}/log", params={"host": "app2"})).text()
    assert sorted(only.splitlines()) == ["[app2] first on me", "[app2] second", "[app2] to stderr"]
    out = await (
        await client.get(
            f"/api/actions/{action_id}/log", params={"host": "app2", "stream": "stdout"}
        )
    ).text()
    assert out == "[app2] first on me\n[app2] second\n"

    a = await (await client.get(f"/api/actions/{action_id}")).json()
    runs = {r["host"]: r for r in a["steps"][0]["hosts"]}
    assert sorted(runs) == ["app1", "app2"]
    assert all(r["state"] == "succeeded" and r["exit_code"] == 0 for r in runs.values())
    listed = await (await client.get("/api/actions")).json()
    item = next(i for i in listed["items"] if i["id"] == action_id)
    assert item["hosts"] == {"succeeded": 2, "failed": 0, "total": 2}
