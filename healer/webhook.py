"""Alertmanager's webhook payload (version "4"), validated the way Alertmanager 0.25 sends it.

Alertmanager's `notify/webhook` Message embeds `template.Data` (receiver, status, alerts,
groupLabels, commonLabels, commonAnnotations, externalURL) and adds version, groupKey and
truncatedAlerts. Each alert carries status, labels, annotations, startsAt, endsAt (Go's zero
time `0001-01-01T00:00:00Z` while firing), generatorURL and fingerprint. Unknown fields are
kept in the stored payload and otherwise ignored, so a newer Alertmanager still gets through.

Client mistakes never reach the journal: bad JSON or shape is `BadPayload` (400, naming the
JSON path of the first problem), another version is `UnsupportedVersion` (422). Strings the
journal cannot store (NUL characters, unpaired surrogates) and numbers beyond a double's range
are refused here as well.

The body is parsed by orjson, strictly as RFC 8259 says JSON between systems is: UTF-8 without
a byte order mark, no NaN or Infinity, no number that overflows a double, no unpaired
surrogate; an integer beyond 64 bits becomes a double.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from exporter.base.errors import TaskmedicError

__all__ = [
    "Alert",
    "BadPayload",
    "Notification",
    "OverLimit",
    "PayloadLimits",
    "UnsupportedVersion",
    "parse_notification",
]

_INT32_MAX = 2**31 - 1


class BadPayload(TaskmedicError, ValueError):
    """Not JSON or not the webhook's shape; `path` is the JSON path of the first problem."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class UnsupportedVersion(TaskmedicError, ValueError):
    """A webhook version other than "4"."""


class OverLimit(TaskmedicError, ValueError):
    """Within the webhook's shape but over one of `healer.limits`: 413 (too many alerts) or
    422 (a label too long, too many labels), naming the limit and where it was passed."""

    def __init__(self, status: int, path: str, limit: str, maximum: int, message: str) -> None:
        self.status = status
        self.path = path
        self.limit = limit
        self.maximum = maximum
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """The parts of `healer.limits` a notification is checked against before it is modelled."""

    alerts: int = 1000
    labels: int = 64
    value: int = 8 * 1024


def _over_value(text: object, limit: int) -> bool:
    if not isinstance(text, str) or len(text) * 4 <= limit:  # UTF-8: at most 4 bytes a char
        return False
    return len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit


def _check_labels(raw: object, path: str, limits: PayloadLimits, count: bool, sizes: bool) -> None:
    if not isinstance(raw, dict):
        return  # the model names the wrong shape
    if count and len(raw) > limits.labels:
        raise OverLimit(
            422,
            path,
            "healer.limits.labels_per_alert",
            limits.labels,
            f"{len(raw)} entries, more than healer.limits.labels_per_alert ({limits.labels})",
        )
    if not sizes:
        return
    for name, value in raw.items():
        if _over_value(name, limits.value) or _over_value(value, limits.value):
            raise OverLimit(
                422,
                f"{path}.{name[:64]}",
                "healer.limits.label_value",
                limits.value,
                f"longer than healer.limits.label_value ({limits.value} bytes)",
            )


def _check_limits(raw: dict[str, Any], limits: PayloadLimits, body_size: int) -> None:
    """Refuse what would cost far more than it is worth, before pydantic builds a model of it:
    the alerts are counted first, then every label and annotation is measured (only when the
    body is larger than one value may be: the common small notification pays no walk)."""
    alerts = raw.get("alerts")
    if isinstance(alerts, list) and len(alerts) > limits.alerts:
        raise OverLimit(
            413,
            "$.alerts",
            "healer.limits.alerts_per_notification",
            limits.alerts,
            f"{len(alerts)} alerts, more than healer.limits.alerts_per_notification "
            f"({limits.alerts}); lower max_alerts in Alertmanager's webhook_config",
        )
    sizes = body_size > limits.value
    if sizes:
        for key in ("groupLabels", "commonLabels", "commonAnnotations"):
            _check_labels(raw.get(key), f"$.{key}", limits, count=False, sizes=True)
    for i, alert in enumerate(alerts if isinstance(alerts, list) else ()):
        if isinstance(alert, dict):
            for key in ("labels", "annotations"):
                _check_labels(alert.get(key), f"$.alerts[{i}].{key}", limits, True, sizes)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


def _in_utc(value: datetime) -> datetime:
    """The same moment in UTC: RFC 3339 allows offsets up to ±23:59, PostgreSQL takes only
    ±15:59, and a time the journal refuses would be a 500 for client input."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside years 1-9999 in UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class Alert(_Lenient):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: UtcDatetime = Field(alias="startsAt")
    ends_at: UtcDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=256)

    @property
    def ends_at_or_none(self) -> datetime | None:
        """endsAt, with Go's zero time (a firing alert) as None."""
        if self.ends_at is None or self.ends_at.year <= 1:
            return None
        return self.ends_at

    def as_json(self) -> dict[str, Any]:
        """The alert in Alertmanager's own field names, as plans and scripts receive it."""
        return self.model_dump(mode="json", by_alias=True)


class Notification(_Lenient):
    version: str
    group_key: str = Field(default="", alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[Alert]

    @property
    def truncated_for_journal(self) -> int:
        """truncatedAlerts fitted into the journal's integer column (it is a uint64 in Go)."""
        return min(self.truncated_alerts, _INT32_MAX)


def _json_path(loc: tuple[int | str, ...]) -> str:
    out = "$"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _unstorable(value: Any, path: tuple[int | str, ...]) -> tuple[str, str] | None:
    """The first string the journal cannot store (jsonb has no NUL; UTF-8 has no surrogates)."""
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return _json_path(p), "NUL characters are not accepted"
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return _json_path(p), "invalid Unicode (unpaired surrogate)"
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                if _unstorable(k, p) is not None:
                    return _json_path(p), "a key has NUL characters or invalid Unicode"
                stack.append((item, (*p, k)))
        elif isinstance(v, list):
            stack.extend((item, (*p, i)) for i, item in reversed(list(enumerate(v))))
    return None


# Only these escapes make a JSON string the journal cannot store: \u0000 and the surrogate
# range \uD800-\uDFFF. A false match (an escaped backslash before "u0000") only costs the
# full walk of _unstorable.
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _may_be_unstorable(body: bytes) -> bool:
    """False when no string parsed from `body` can hold NUL or a surrogate, so the walk of
    `_unstorable` can be skipped: the body has no NUL byte and no escape of either kind (it is
    UTF-8, or orjson refused it already).
    """
    return b"\x00" in body or _RISKY_ESCAPE.search(body) is not None


def parse_notification(
    body: bytes, limits: PayloadLimits | None = None
) -> tuple[Notification, dict[str, Any]]:
    """Validate a webhook body; returns the model and the raw JSON object to store.

    Raises BadPayload, UnsupportedVersion, or OverLimit past `limits` (default: no limits)."""
    try:
        # A number beyond a double's range is refused, never made infinite: infinity is not
        # JSON, and the journal would refuse the payload (a 500 for bad input).
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPayload("$", f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadPayload("$", "expected a JSON object")
    version = raw.get("version")
    if "version" not in raw:
        raise BadPayload("$.version", "required field is missing")
    if not isinstance(version, str):
        raise BadPayload("$.version", 'expected a string such as "4"')
    if version != "4":
        raise UnsupportedVersion(
            f'webhook version {version[:20]!r} is not supported; taskmedic accepts version "4"'
        )
    if limits is not None:
        _check_limits(raw, limits, len(body))
    bad = _unstorable(raw, ()) if _may_be_unstorable(body) else None
    if bad is not None:
        raise BadPayload(*bad)
    try:
        notification = Notification.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        msg = "required field is missing" if err["type"] == "missing" else err["msg"]
        raise BadPayload(_json_path(err["loc"]), msg) from None
    return notification, raw
