"""The test services themselves work: a worker runs a task end to end."""

from pathlib import Path

from tests.celery_app import make_app
from tests.services import Worker, start_worker


def test_a_real_worker_runs_a_task(broker_url: str, tmp_path: Path, workers: list[Worker]) -> None:
    workers.append(start_worker(broker_url, tmp_path))
    app = make_app(broker_url)
    assert app.send_task("tests.add", (2, 3)).get(timeout=20) == 5
    app.close()
