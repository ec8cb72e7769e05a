"""What the demo tells its user: where everything is, how to break it, what then shows up."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from demo import configs, faults, sample, tasks
from demo.processes import Child

if TYPE_CHECKING:
    from demo.main import Demo

READY_PREFIX = "taskmedic-demo ready"


def ready_line(demo: Demo) -> str:
    """One machine-readable line: URLs and every PID the demo started (tests parse it)."""
    assert demo.config
    assert demo.postgres
    assert demo.redis
    fields: dict[str, object] = {
        "metrics": f"{demo.config.base_url}/metrics",
        "landing": f"{demo.config.base_url}/",
        "config": str(demo.config.path),
        "cluster": configs.CLUSTER,
        "worker": demo.worker_name,
    }
    if demo.healer_files is not None:
        fields["healer"] = demo.healer_files.base_url + "/"
    for child in demo.children:
        fields[f"{child.name}_pid"] = child.pid
    fields["postgres_pid"] = demo.postgres.pid
    fields["redis_pid"] = demo.redis.pid
    return READY_PREFIX + " " + " ".join(f"{k}={v}" for k, v in fields.items())


def guide(demo: Demo) -> str:
    assert demo.config
    assert demo.worker
    assert demo.beat
    assert demo.exporter
    assert demo.postgres
    assert demo.redis
    url = demo.config.base_url
    w, b = demo.worker.pid, demo.beat.pid
    taskmedic = " ".join(demo.taskmedic)
    fault_command = f"{sys.executable} -m demo fault"
    text = f"""
taskmedic demo is running
  metrics        {url}/metrics
  landing page   {url}/   (checks, their state and last error)
  config         {demo.config.path}
  logs           {demo.logs}/
  celery worker  pid {w}  ({demo.worker_name}, heartbeat every 2 s, a timeline import takes 20 s)
  celery beat    pid {b}  (refreshes agents_status_cache every {tasks.CACHE_EVERY:g} s,
                           uploads a timeline every {tasks.UPLOAD_EVERY:g} s)
  exporter       pid {demo.exporter.pid}
  postgres       pid {demo.postgres.pid}      redis  pid {demo.redis.pid}

Right now /metrics shows every check up and the worker alive:
  taskmedic_check_up{{check="tree_status_cache"}} 1   (and timelines, records_without_action)
  taskmedic_celery_worker_up{{cluster="{configs.CLUSTER}",worker="{demo.worker_name}"}} 1
and one finding already: task_record {demo.orphan_record} was written without its task_action
(ibex's bug), so after its grace ({configs.RECORD_GRACE:g} s):
  taskmedic_orphan_rows{{check="records_without_action"}} 1

Break something and watch /metrics. Type a fault's number or name here and press Enter,
or from another terminal run
  {fault_command} NAME
and the demo says what happens next and when:
{faults.menu()}
By hand, the same:
  1. Stop beat:                kill -STOP {b}      (resume with kill -CONT {b})
     The cache is no longer refreshed; after max_age ({configs.MAX_AGE:g} s):
       taskmedic_stale_rows{{check="tree_status_cache"}} {sample.AGENTS}
       taskmedic_stale_oldest_age_seconds{{check="tree_status_cache"}} growing
  2. Kill the worker mid-job:  kill -9 {w}
     Within about 5 s (two missed heartbeats):
       taskmedic_celery_worker_up{{cluster="{configs.CLUSTER}",worker="{demo.worker_name}"}} 0
       taskmedic_celery_workers{{cluster="{configs.CLUSTER}",state="offline"}} 1
     The timeline it was importing keeps saying 'processing'; after its grace
     ({configs.TIMELINE_GRACE:g} s) and two collections:
       taskmedic_orphan_tasks{{check="timelines",reason="lost"}} 1 (or more)
     Nobody runs beat's cache refresh either: tree_status_cache goes stale after
     {configs.MAX_AGE:g} s too, until the worker is back (`demo fault restart-worker`).
  Every finding with its row key and task id:
       {taskmedic} check --config {demo.config.path}
"""
    text += (
        healer_guide(demo)
        if demo.healer_files is not None
        else (
            "\nWith --healer the demo also runs the healer (and Prometheus and Alertmanager when"
            "\ninstalled: apt-get install prometheus prometheus-alertmanager on Debian/Ubuntu)"
            "\nand repairs what you break.\n"
        )
    )
    return text + "\nCtrl-C stops everything the demo started.\n"


def healer_guide(demo: Demo) -> str:
    files = demo.healer_files
    assert files is not None
    assert demo.config is not None
    taskmedic = " ".join(demo.taskmedic)
    text = f"""
The healer runs the demo's rules ({files.rules_file}):
  console        {files.base_url}/   (log in as demo, password in {files.password_file})
  actions        {taskmedic} actions list --config {demo.config.path}
  killed worker  -> TaskmedicCeleryWorkerDown (~10 s) -> starts the worker again
                 -> TaskmedicOrphanTasks (~25 s)      -> marks the lost timelines as failed
  stopped beat   -> TaskmedicStaleRows (~35 s)        -> sends demo.update_tree_status_cache
  orphan record  -> TaskmedicOrphanRows (~15 s)       -> waits for your approval in the console
  A killed worker also leaves the cache stale (nobody runs beat's refresh); the worker is
  restarted first so that the refresh finds it. Were it still down, the refresh would fail
  after its 20 s wait with "no result within 20s (state PENDING)".
"""
    if demo.prometheus is not None and demo.alertmanager_url:
        text += (
            f"  prometheus     {demo.prometheus_url}/alerts   (shipped rules, `for:` in seconds)\n"
            f"  alertmanager   {demo.alertmanager_url}/   (webhook to the healer, bearer token)\n"
        )
    else:
        text += (
            "  --without-prometheus:"
            if demo.args.without_prometheus
            else "  No Prometheus and Alertmanager here (Debian/Ubuntu: apt-get install\n"
            "  prometheus prometheus-alertmanager; the demo uses them when installed), so"
        )
        text += """ the demo reads /metrics
  every 2 s and posts these alerts to the healer itself, as Alertmanager would (a fresh
  startsAt for each new fault, resolved when it clears).
"""
    return text


def fault_note(demo: Demo, child: Child) -> str | None:
    """What to look for after a child died or was suspended; each said once."""
    if not child.alive():
        if "exit" in child.reported:
            return None
        child.reported.add("exit")
        what = f"{child.name} (pid {child.pid}) {child.exit_description()}"
        if child is demo.worker:
            return (
                f'{what}: taskmedic_celery_worker_up{{worker="{demo.worker_name}"}} goes 0 '
                "within about a second (the broker sees its connection close); a timeline it "
                f'was importing becomes an orphan (reason="lost") '
                f"after {configs.TIMELINE_GRACE:g} s. "
                + (
                    "The healer starts it again once TaskmedicCeleryWorkerDown fires."
                    if demo.healer_files is not None
                    else "`python -m demo fault restart-worker` starts it again."
                )
            )
        if child is demo.beat:
            return f"{what}: cache rows go stale after {configs.MAX_AGE:g} s"
        return f"{what}; last lines of {child.log}:\n{child.tail()}"
    if child.stopped():
        if "stopped" in child.reported:
            return None
        child.reported.add("stopped")
        extra = (
            f': taskmedic_stale_rows{{check="tree_status_cache"}} rises after {configs.MAX_AGE:g} s'
            if child is demo.beat
            else ""
        )
        return f"{child.name} (pid {child.pid}) is suspended{extra}; kill -CONT {child.pid}"
    if "stopped" in child.reported:
        child.reported.discard("stopped")
        return f"{child.name} (pid {child.pid}) resumed"
    return None
