"""Reading a Prometheus text page back into numbers (with prometheus_client's own parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


def samples(text: str) -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def by_label(values: dict[tuple[str, Labels], float], name: str, label: str) -> dict[str, float]:
    """`{label value: sample value}` of every `name` sample carrying `label`."""
    out: dict[str, float] = {}
    for (n, labels), v in values.items():
        if n == name:
            d = dict(labels)
            if label in d:
                out[d[label]] = v
    return out
