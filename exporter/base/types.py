"""The value types of taskmedic's config models, shared by the exporter's and the healer's.

Every model forbids unknown keys (`Model`); durations accept `90s`, `10m`, `1h30m`, `250ms` or
seconds; names are what may label a metric or appear in a URL; listen addresses are
`host:port`. `mask_dsn` is how any DSN is shown: with its password hidden; `scrub` is how any
driver's error text is shown: with every secret it may quote hidden.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

__all__ = [
    "Duration",
    "Listen",
    "Model",
    "Name",
    "format_duration",
    "mask_dsn",
    "parse_duration",
    "scrub",
    "show_durations",
    "split_listen",
]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*((?:\d+(?:\.\d+)?(?:ms|s|m|h|d)\s*)+)$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """`"90s"`, `"10m"`, `"1h30m"`, `"250ms"` or a number of seconds -> seconds as float."""
    if isinstance(value, bool):
        # ValueError, not TypeError: pydantic turns only ValueError into a located error.
        raise ValueError("expected a duration such as 30s, 10m or 1h")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    else:
        raise ValueError("expected a duration such as 30s, 10m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be finite")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as a config file writes them: `600.0` -> `"10m"`, `5400` -> `"1h30m"`."""
    if seconds == 0:
        return "0s"
    ms = round(seconds * 1000)
    out = ""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        n, ms = divmod(ms, size)
        if n:
            out += f"{n}{unit}"
    return out + (f"{ms}ms" if ms else "")


def _is_duration(annotation: Any) -> bool:
    """True when a field's annotation is a Duration (alone, or in a union such as `| None`)."""
    if typing.get_origin(annotation) is Annotated:
        return any(getattr(m, "func", None) is parse_duration for m in annotation.__metadata__)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_duration(a) for a in typing.get_args(annotation))
    return False


def show_durations(model: BaseModel, shown: dict[str, Any]) -> dict[str, Any]:
    """`shown` (a model's plain data, as `display()` gives it) with every duration field
    written as in a config file (`10m`, not `600.0`); it is changed in place and returned."""
    for name, info in type(model).model_fields.items():
        if name not in shown:
            continue
        value, data = getattr(model, name), shown[name]
        durations = any(getattr(m, "func", None) is parse_duration for m in info.metadata)
        if (durations or _is_duration(info.annotation)) and isinstance(data, int | float):
            shown[name] = format_duration(float(data))
        elif isinstance(value, BaseModel) and isinstance(data, dict):
            show_durations(value, data)
        elif isinstance(value, list | tuple) and isinstance(data, list):
            for item, item_data in zip(value, data, strict=False):
                if isinstance(item, BaseModel) and isinstance(item_data, dict):
                    show_durations(item, item_data)
        elif isinstance(value, dict) and isinstance(data, dict):
            for key, item in value.items():
                if isinstance(item, BaseModel) and isinstance(data.get(key), dict):
                    show_durations(item, data[key])
    return shown


# What an editor is told a duration looks like (the JSON Schema of `taskmedic schema`).
DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": _DURATION.pattern},
    ],
    "description": "seconds, or a duration such as 30s, 10m, 1h30m or 250ms",
}

Duration = Annotated[
    float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA, mode="validation")
]
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=100)]


def _listen(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$", value):
        raise ValueError("expected host:port, for example 127.0.0.1:9808")
    if int(value.rsplit(":", 1)[1]) > 65535:
        raise ValueError("port must be at most 65535")
    return value


Listen = Annotated[
    str,
    BeforeValidator(_listen),
    WithJsonSchema(
        {"type": "string", "pattern": r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$"},
        mode="validation",
    ),
]


def split_listen(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:9808"` -> `("127.0.0.1", 9808)`; `"[::1]:9808"` -> `("::1", 9808)`."""
    host, port = listen.rsplit(":", 1)
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all


def mask_dsn(dsn: str) -> str:
    """Hide the password of a URL or libpq key=value DSN; everything else stays readable.

    Errs on the side of hiding: an unescaped `@` or `/` in a URL password cannot reveal part
    of it, because the user info is taken up to the LAST `@`.
    """
    masked = re.sub(
        r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", r"\1***", dsn, flags=re.IGNORECASE
    )
    m = re.match(r"^([a-z][a-z0-9+.-]*://)(.*)$", masked, flags=re.IGNORECASE | re.DOTALL)
    if m is None or "@" not in m.group(2):
        return masked
    userinfo, _, rest = m.group(2).rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{m.group(1)}{userinfo}@{rest}"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` (a driver's or broker's error) with every secret in it hidden.

    Each known secret (a whole DSN, its password, a password file's content) becomes `***`,
    longest first; then any password a URL or a `password=` pair still carries is masked, so
    a secret we were not told of cannot show either.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = re.sub(
        r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&\"]+)", r"\1***", text, flags=re.IGNORECASE
    )
    # user:password@ in a URL, up to the last @ of the word: an unescaped @ hides more.
    return re.sub(r"([a-z][a-z0-9+.-]*://[^:/@\s]*):\S*@", r"\1:***@", text, flags=re.IGNORECASE)


class Model(BaseModel):
    """Every section forbids unknown keys: a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
