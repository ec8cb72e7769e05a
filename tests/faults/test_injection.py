"""An injection corpus through labels and annotations into the script, sql, celery, http and
verify steps of a real healer: every value arrives as the bytes it was, nothing is
interpreted (no shell, no template, no path), and nothing is written anywhere but the journal
and the step's own targets.

Each value goes out as label `v` and annotation `a` of one alert; a rule per step kind takes
it through a declared parameter that accepts anything (the repair step is left out: what it
changes comes from its check, and a label reaches it only as an SQL parameter, as in `sql`).
A value with NUL is refused at the door (400, nothing recorded); one larger than the kernel's
limit for one argument or environment string (128 KiB) cannot start a script, and that step
fails saying so.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from tests.services import Worker, start_worker, wait_for
from tests.support.faults import RestartableHealer, post, report
from tests.support.ingest_helpers import payload, rows, with_alert, write_config

CANARY = Path(f"/tmp/taskmedic-inject-{uuid.uuid4().hex}")
ARG_MAX_STRING = 128 * 1024


def corpus() -> list[str]:
    c = str(CANARY)
    return [
        f"; touch {c}",
        f"$(touch {c})",
        f"`touch {c}`",
        f"| touch {c}",
        f"&& touch {c} &",
        f"x\ntouch {c}\n",
        f"x\r\nX-Injected: 1\r\n\r\ntouch {c}",
        "{{ 7 * 7 }}",
        "{% raw %}{{ params }}{% endraw %}",
        "%(v)s'; DROP TABLE inj; --",
        f"../../../../../../{c.lstrip('/')}",
        f"{c}/../../etc/passwd",
        "nul\x00byte",
        "\u202etxt.exe\u202c",
        "\u2066isolate\u2069",
        "\x1b[2J\x1b[31mred\x1b[0m\x1b]0;title\x07",
        "*?[a-z]~$HOME${PATH}",
        "é ü ß 漢字 🙂",
        "A" * (1 << 20),
    ]


RULES = """\
rules:
  - name: inject-script
    match: {{alertname: Injection}}
    params:
      i: {{label: i, pattern: '[0-9]+'}}
      v: {{label: v, pattern: '(?s).*'}}
      a: {{annotation: a, pattern: '(?s).*'}}
    steps:
      - name: script
        script:
          argv:
            - "{py}"
            - -c
            - "{script}"
            - "{out}/{{{{ params.i }}}}.json"
            - "{{{{ params.v }}}}"
            - "{{{{ params.a }}}}"
  - name: inject-sql
    match: {{alertname: Injection}}
    params:
      i: {{label: i, pattern: '[0-9]+'}}
      v: {{label: v, pattern: '(?s).*'}}
    steps:
      - name: sql
        sql:
          database: target
          query: "INSERT INTO inj (i, v) VALUES (%(i)s::int, %(v)s)"
          params: {{i: "{{{{ params.i }}}}", v: "{{{{ params.v }}}}"}}
  - name: inject-celery
    match: {{alertname: Injection}}
    params:
      i: {{label: i, pattern: '[0-9]+'}}
      v: {{label: v, pattern: '(?s).*'}}
    steps:
      - name: celery
        celery:
          app: main
          task: tests.touch
          args: ["{out}/celery-{{{{ params.i }}}}.txt", "{{{{ params.v }}}}"]
          wait: 60s
  - name: inject-verify
    match: {{alertname: Injection}}
    params:
      v: {{label: v, pattern: '(?s).*'}}
    steps:
      - name: verify
        verify:
          series: taskmedic_injected
          labels: {{v: "{{{{ params.v }}}}"}}
          equals: 1
          within: 30s
          interval: 0.5s
          url: "http://127.0.0.1:{port}/metrics"
  - name: inject-http
    match: {{alertname: Injection}}
    params:
      i: {{label: i, pattern: '[0-9]+'}}
      v: {{label: v, pattern: '(?s).*'}}
    steps:
      - name: http
        http:
          url: "http://127.0.0.1:{port}/echo/{{{{ params.i }}}}"
          json: {{v: "{{{{ params.v }}}}"}}
"""

# The script writes what it received: argv, the label's environment variable and the alert
# on stdin.
SCRIPT = (
    "import json, os, sys; alert = json.load(sys.stdin); json.dump({'argv': sys.argv[2:],"
    " 'env': os.environ.get('TASKMEDIC_LABEL_V'), 'stdin': [alert['labels']['v'],"
    " alert['annotations']['a']]}, open(sys.argv[1], 'w'))"
)


class Echo(ThreadingHTTPServer):
    bodies: dict[int, Any]
    metrics: bytes  # taskmedic_injected{v=<each value>} 1, as an exporter would show it


class EchoHandler(BaseHTTPRequestHandler):
    server: Echo

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.bodies[int(self.path.rsplit("/", 1)[1])] = json.loads(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(self.server.metrics)))
        self.end_headers()
        self.wfile.write(self.server.metrics)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo(("127.0.0.1", 0), EchoHandler)
    server.bodies = {}
    registry = CollectorRegistry()
    gauge = Gauge("taskmedic_injected", "one per corpus value", ["v"], registry=registry)
    for v in corpus():
        if "\x00" not in v:
            gauge.labels(v=v).set(1)
    server.metrics = generate_latest(registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _files(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if p.is_file()}


def _arrived(
    i: int,
    v: str,
    status: int,
    outcome: dict[tuple[int, str], tuple[str, str]],
    out: Path,
    stored: dict[int, str],
    http_body: Any,
) -> list[tuple[Any, ...]]:
    """What went wrong with value `v` (number `i`) in each step kind; [] when nothing did."""
    if "\x00" in v:
        ok = status == 400 and not any(k[0] == i for k in outcome)
        return [] if ok else [(i, "a NUL was recorded", status)]
    if status != 200:
        return [(i, "not taken", status)]
    wrong: list[tuple[Any, ...]] = []
    written = out / f"{i}.json"
    if len(v.encode()) > ARG_MAX_STRING:
        state, reason = outcome[(i, "inject-script")]
        if state != "failed" or written.exists():
            wrong.append((i, "an oversized argument ran", state, reason))
    elif not written.exists() or json.loads(written.read_bytes()) != {
        "argv": [v, v],
        "env": v,
        "stdin": [v, v],
    }:
        wrong.append((i, "script", outcome.get((i, "inject-script"))))
    if stored.get(i) != v:
        wrong.append((i, "sql", outcome.get((i, "inject-sql"))))
    sent = out / f"celery-{i}.txt"
    if not sent.exists() or sent.read_bytes().decode() != v + "\n":
        wrong.append((i, "celery", outcome.get((i, "inject-celery"))))
    if outcome.get((i, "inject-verify"), ("",))[0] != "succeeded":
        wrong.append((i, "verify", outcome.get((i, "inject-verify"))))
    if http_body != {"v": v}:
        wrong.append((i, "http", outcome.get((i, "inject-http"))))
    return wrong


@pytest.mark.timeout(300)
def test_an_injection_corpus_through_labels_reaches_every_step_verbatim_and_uninterpreted(
    journal_dsn: str,
    pg_dsn: str,
    tmp_path: Path,
    echo: Echo,
    broker_url: str,
    workers: list[Worker],
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    workers.append(start_worker(broker_url, tmp_path))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE inj (i int PRIMARY KEY, v text NOT NULL)")
    rules = RULES.format(py=sys.executable, script=SCRIPT, out=out, port=echo.server_address[1])
    config = write_config(
        tmp_path,
        journal_dsn,
        rules=rules,
        # The 1 MB value must reach every step kind, so the 8 KiB default label cap is raised.
        healer={"max_body": "8MiB", "limits": {"label_value": "2MiB"}},
        top={
            "databases": {"target": {"dsn": pg_dsn}},
            "celery": {"main": {"broker": broker_url, "backend": broker_url}},
        },
    )
    healer = RestartableHealer(config, tmp_path / "healer.log")
    healer.start()
    before = _files(tmp_path)
    values = corpus()
    statuses = {}
    try:
        for i, v in enumerate(values):
            body = with_alert(
                payload("firing_stale_rows"),
                labels={"alertname": "Injection", "i": str(i), "v": v},
                annotations={"a": v},
                fingerprint=f"inject-{i}",
            )
            statuses[i] = post(healer.url, json.dumps(body).encode(), timeout=60)

        def settled() -> bool:
            states = rows(journal_dsn, "SELECT state FROM actions")
            return all(s in ("succeeded", "failed") for (s,) in states)

        wait_for(settled, timeout=120, what="every action to finish")
    finally:
        healer.stop()

    outcome = {
        (int(i), rule): (state, reason)
        for i, rule, state, reason in rows(
            journal_dsn, "SELECT labels->>'i', rule, state, reason FROM actions"
        )
    }
    stored = dict(rows(pg_dsn, "SELECT i, v FROM inj"))
    wrong = [
        w
        for i, v in enumerate(values)
        for w in _arrived(i, v, statuses[i], outcome, out, stored, echo.bodies.get(i))
    ]
    expected_outputs = {
        out / f"{n}{i}.{x}"
        for i in range(len(values))
        for n, x in (("", "json"), ("celery-", "txt"))
    }
    stray = {p for p in _files(tmp_path) - before if p not in expected_outputs}
    stray = {p for p in stray if not p.name.endswith(".log")}
    report(
        "injection corpus",
        values=len(values),
        answers=dict(Counter(statuses.values())),
        actions=dict(Counter(s for s, _ in outcome.values())),
        wrong=len(wrong),
        interpreted=int(CANARY.exists()),
        stray_files=len(stray),
    )
    assert not CANARY.exists(), "a value was run by a shell"
    assert wrong == [], wrong
    assert stray == set(), stray
