"""Rendering a rule for one alert into the `Plan` the executor will run, exactly as approved.

Alert values reach a plan only through declared parameters: each parameter takes one label
(or annotation) and must match its pattern in full, or the action fails with nothing run. The
templates (argv, env, parameter values) see nothing but `params`, in a sandboxed Jinja2
environment where an undefined name is an error, not an empty string. Scripts also receive
every label as a `TASKMEDIC_LABEL_<NAME>` environment variable and the alert as JSON on stdin;
neither is ever interpreted by a shell.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from exporter.base.errors import TaskmedicError
from healer.agents.settings import is_host_name
from healer.plan import (
    REPAIR_KEY,
    BasicAuthSpec,
    CelerySpec,
    HostsSpec,
    HttpSpec,
    Plan,
    PlanStep,
    RepairSpec,
    ScriptSpec,
    SqlSpec,
    UndoSpec,
    VerifySpec,
)

if TYPE_CHECKING:
    from healer.rules.models import HttpStep, OnRule, Rule, ScriptStep, SqlStep
    from healer.webhook import Alert

__all__ = ["ENV", "RenderError", "label_env", "render", "resolve_params"]

ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)


class RenderError(TaskmedicError):
    """The rule cannot be rendered for this alert; the message says why (recorded as reason)."""


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def resolve_params(rule: Rule, alert: Alert) -> dict[str, str]:
    """Each declared parameter from the alert, checked against its pattern in full."""
    out: dict[str, str] = {}
    for name, spec in rule.params.items():
        if spec.label is not None:
            source, value = f"label {spec.label}", alert.labels.get(spec.label)
        else:
            source, value = (
                f"annotation {spec.annotation}",
                alert.annotations.get(spec.annotation or ""),
            )
        if value is None:
            if spec.default is None:
                raise RenderError(f"parameter {name}: the alert has no {source}")
            value = spec.default
        if re.fullmatch(spec.pattern, value) is None:
            raise RenderError(
                f"parameter {name}: {source} value {_shown(value)} does not match "
                f"pattern {spec.pattern!r}; nothing was run"
            )
        out[name] = value
    return out


_ODD_IN_NAME = re.compile(r"[^A-Z0-9_]")


@lru_cache(maxsize=4096)
def _env_name(label: str) -> str:
    return "TASKMEDIC_LABEL_" + _ODD_IN_NAME.sub("_", label.upper())


def label_env(labels: dict[str, str]) -> dict[str, str]:
    """`TASKMEDIC_LABEL_<NAME>` for every label (names upper-cased, odd characters as `_`)."""
    return {_env_name(k): v for k, v in labels.items()}


@lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    return ENV.from_string(source)


def _render_str(source: str, params: dict[str, str], extra: dict[str, str] | None = None) -> str:
    if "{" not in source:
        return source
    try:
        return _compiled(source).render(params=params, **(extra or {}))
    except TemplateError as exc:
        raise RenderError(f"template {source!r}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise RenderError(f"template {source!r}: {type(exc).__name__}: {exc}") from None


def _render_value(value: Any, params: dict[str, str], extra: dict[str, str] | None = None) -> Any:
    if isinstance(value, str):
        return _render_str(value, params, extra)
    if isinstance(value, list):
        return [_render_value(v, params, extra) for v in value]
    if isinstance(value, dict):
        return {k: _render_value(v, params, extra) for k, v in value.items()}
    return value


def _script(step: ScriptStep, params: dict[str, str], alert: Alert, stdin: str) -> ScriptSpec:
    env = label_env(alert.labels)
    env.update({k: _render_str(v, params) for k, v in step.env.items()})
    env["TASKMEDIC_ALERT_FINGERPRINT"] = alert.fingerprint
    return ScriptSpec(
        argv=[_render_str(a, params) for a in step.argv],
        env=env,
        stdin=stdin,
        cwd=_render_str(step.cwd, params) if step.cwd is not None else None,
        timeout=step.timeout,
        kill_grace=step.kill_grace,
    )


def _on(on: OnRule | None, alert: Alert) -> HostsSpec | None:
    if on is None:
        return None
    if on.hosts is not None:
        return HostsSpec(
            hosts=list(on.hosts), batch=on.batch, tolerance=on.tolerance, pause_after=on.pause_after
        )
    assert on.host_from_label is not None
    assert on.pattern is not None
    value = alert.labels.get(on.host_from_label)
    if value is None:
        raise RenderError(f"on: the alert has no label {on.host_from_label}; nothing was run")
    m = re.fullmatch(on.pattern, value)
    if m is None:
        raise RenderError(
            f"on: label {on.host_from_label} value {_shown(value)} does not match pattern "
            f"{on.pattern!r}; nothing was run"
        )
    host = m.group("host") if "host" in m.re.groupindex else value
    if not host or not is_host_name(host):
        raise RenderError(f"on: {_shown(host or '')} is not a host name; nothing was run")
    return HostsSpec(hosts=[host])


def _sql(step: SqlStep, params: dict[str, str]) -> SqlSpec:
    return SqlSpec(
        database=step.database,
        query=step.query,
        params=_render_value(step.params, params),
        timeout=step.timeout,
    )


def _http(step: HttpStep, params: dict[str, str], *, per_key: bool = False) -> HttpSpec:
    key = {"key": REPAIR_KEY} if per_key else None
    auth = step.basic_auth
    return HttpSpec(
        method=step.method,
        url=_render_str(step.url, params, key),
        headers={k: _render_str(v, params) for k, v in step.headers.items()},
        header_files=dict(step.header_files),
        basic_auth=BasicAuthSpec(username=auth.username, password_file=auth.password_file)
        if auth is not None
        else None,
        body=_render_value(step.body, params, key),
        expect_status=step.expect_status,
        expect_json=step.expect_json,
        timeout=step.timeout,
    )


def render(rule: Rule, alert: Alert, *, dry_run: bool = False) -> Plan:
    """The plan of `rule` for `alert`; raises RenderError (nothing will run) when it cannot."""
    params = resolve_params(rule, alert)
    alert_data = alert.as_json()
    # The alert as a script reads it: JSON with sorted keys (orjson: the request path renders
    # a plan for every alert).
    stdin = orjson.dumps(alert_data, option=orjson.OPT_SORT_KEYS).decode() + "\n"
    steps: list[PlanStep] = []
    for s in rule.steps:
        undo = None
        if s.undo is not None:
            undo = UndoSpec(
                script=_script(s.undo.script, params, alert, stdin) if s.undo.script else None,
                sql=_sql(s.undo.sql, params) if s.undo.sql else None,
            )
        spec: dict[str, Any] = {}
        if s.script is not None:
            spec["script"] = _script(s.script, params, alert, stdin)
        elif s.sql is not None:
            spec["sql"] = _sql(s.sql, params)
        elif s.celery is not None:
            c = s.celery
            spec["celery"] = CelerySpec(
                app=c.app,
                task=c.task,
                args=_render_value(c.args, params),
                kwargs=_render_value(c.kwargs, params),
                queue=c.queue,
                wait=c.wait,
            )
        elif s.repair is not None:
            r = s.repair
            spec["repair"] = RepairSpec(
                check=r.check,
                database=r.database,
                query=r.sql,
                http=_http(r.http, params, per_key=True) if r.http is not None else None,
                params=_render_value(r.params, params),
                timeout=r.timeout,
            )
        elif s.http is not None:
            spec["http"] = _http(s.http, params)
        elif s.verify is not None:
            v = s.verify
            spec["verify"] = VerifySpec(
                series=v.series,
                labels={k: _render_str(t, params) for k, t in v.labels.items()},
                equals=v.equals,
                within=v.within,
                interval=v.interval,
                url=v.url,
            )
        on = _on(s.on, alert)
        steps.append(PlanStep(name=s.name, kind=s.kind, on=on, undo=undo, **spec))
    return Plan(
        rule=rule.name,
        steps=steps,
        transaction=rule.transaction,
        dry_run=dry_run or rule.dry_run,
        on_interrupt=rule.on_interrupt,
        max_concurrent=rule.max_concurrent,
        alert=alert_data,
    )


def empty_plan(rule: Rule, alert: Alert, *, dry_run: bool = False) -> Plan:
    """The plan recorded for an action that will not run (render failed): no steps."""
    return Plan(
        rule=rule.name,
        steps=[],
        transaction=rule.transaction,
        dry_run=dry_run or rule.dry_run,
        on_interrupt=rule.on_interrupt,
        max_concurrent=rule.max_concurrent,
        alert=alert.as_json(),
    )
