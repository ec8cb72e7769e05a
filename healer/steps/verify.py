"""The `verify` step: wait until the exporter shows the fault gone, or fail the action.

A restart that exits 0 has not repaired anything yet; the proof is the same signal that
raised the alert returning to normal. So the step reads the exporter's `/metrics` (the one
named by the config's `exporter.listen`, or `url`) every `interval` until a series with the
given labels has the expected value, and fails after `within` with the last value it saw.
An exporter that cannot be read counts as not yet verified, never as verified.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from exporter.base.types import split_listen
from exporter.config import Config
from healer.errors import StepFailed
from healer.plan import VerifySpec
from healer.steps.output_capture import StepOutput
from healer.steps.result import StepResult

__all__ = ["exporter_metrics_url", "matching_values", "run_verify"]


def exporter_metrics_url(config: Config) -> str:
    """The `/metrics` URL of the exporter this config runs (a wildcard listen: loopback)."""
    host, port = split_listen(config.exporter.listen)
    if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard listen is reached on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def matching_values(text: str, series: str, labels: dict[str, str]) -> list[float]:
    """The values of every sample named `series` whose labels include `labels`."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == series and all(sample.labels.get(k) == v for k, v in labels.items()):
                out.append(float(sample.value))
    return out


def _verified(values: list[float], equals: float) -> bool:
    return bool(values) and all(math.isclose(v, equals, rel_tol=0.0, abs_tol=1e-9) for v in values)


async def run_verify(spec: VerifySpec, config: Config, output: StepOutput) -> StepResult:
    """Poll until every matching sample equals `spec.equals`; fail after `spec.within`."""
    url = spec.url or exporter_metrics_url(config)
    wanted = ", ".join(f'{k}="{v}"' for k, v in sorted(spec.labels.items()))
    shown = f"{spec.series}{{{wanted}}} == {spec.equals:g}"
    output.system(f"verify: waiting up to {spec.within:g}s for {shown} at {url}")
    deadline = time.monotonic() + spec.within
    last = "no reading yet"
    polls = 0
    async with aiohttp.ClientSession() as session:
        while True:
            polls += 1
            try:
                async with session.get(
                    url, timeout=aiohttp.ClientTimeout(total=min(10.0, spec.within))
                ) as resp:
                    text = await resp.text()
                    status = resp.status
                if status != 200:
                    last = f"the exporter answered {status}"
                else:
                    values = matching_values(text, spec.series, spec.labels)
                    if _verified(values, spec.equals):
                        output.system(f"verify: {shown} after {polls} readings")
                        return StepResult({"verified": shown, "readings": polls, "url": url})
                    last = f"values {[round(v, 6) for v in values]}" if values else "no such series"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = f"cannot read the exporter ({type(exc).__name__})"
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(
                    f"not verified within {spec.within:g}s: {shown}; last reading: {last}",
                    result={"verified": None, "readings": polls, "url": url, "last": last},
                )
            await asyncio.sleep(min(spec.interval, left))
