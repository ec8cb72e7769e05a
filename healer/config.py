"""The healer's server configuration: the `healer:` section of `taskmedic.yaml`.

`HealerConfig` extends the exporter's `Config` (the model of the shared file), so one file
configures both and the `repair` step can re-run the exporter's checks. Rule files have their
own models in `healer.rules.models`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    WithJsonSchema,
    model_validator,
)

from exporter.base.configfile import Located, load
from exporter.base.connections import DatabaseConfig, read_secret
from exporter.base.errors import ConfigError, Problem
from exporter.base.types import Duration, Listen, Model, split_listen
from exporter.config import Config
from healer.agents.settings import AgentsSettings

_MASK = "***"
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "kib": 1024, "mib": 1024**2}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]i?[bB]|[bB])?\s*$")


def parse_size(value: Any) -> int:
    """`1048576`, `"512KiB"`, `"1MiB"`, `"2MB"` -> bytes."""
    if isinstance(value, bool):
        # ValueError, not TypeError: pydantic turns only ValueError into a located error.
        raise ValueError("expected a size such as 1MiB or 65536")  # noqa: TRY004
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    else:
        raise ValueError("expected a size such as 1MiB or 65536")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": _SIZE.pattern},
            ],
            "description": "bytes, or a size such as 512KiB or 1MiB",
        },
        mode="validation",
    ),
]


class _Password(Model):
    """A password given inline or in a file (read once, at load), never empty."""

    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password or password_file")
        if self.password_file is not None:
            secret = read_secret(self.password_file, "password_file")
            object.__setattr__(self, "password", SecretStr(secret))
        if not self.secret_password():
            raise ValueError("the password is empty")
        return self

    def secret_password(self) -> str:
        assert self.password is not None
        return self.password.get_secret_value()


class BasicAuthSettings(_Password):
    username: str = Field(min_length=1)

    def display(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.username, "password": _MASK}
        if self.password_file is not None:
            out["password_file"] = str(self.password_file)
        return out


# What a credential may do: post alerts (POST /alerts), read actions and logs (the API's GETs
# and the console), approve and cancel actions (approve also lets one read).
Role = Literal["post_alerts", "read", "approve"]
AlertmanagerRole = Literal["post_alerts", "read"]  # never approve: approvals name people
_USER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
RESERVED_NAMES = frozenset({"token", "anonymous"})


class UserSettings(_Password):
    """A named person for the console and the API (basic auth): `approved_by` names them."""

    name: str = Field(pattern=_USER_NAME)
    roles: list[Role] = Field(default_factory=lambda: list[Role](["read"]))

    def display(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "password": _MASK, "roles": list(self.roles)}
        if self.password_file is not None:
            out["password_file"] = str(self.password_file)
        return out


class AuthSettings(Model):
    """Who may post alerts and use the API and console.

    With no credentials the healer refuses to start, unless `allow_unauthenticated: true` AND
    it listens on a loopback address only (a laptop demo): a webhook that runs remediation must
    never be open to the network by accident.

    `bearer_token` and `basic_auth` are Alertmanager's credential: by default it may only post
    alerts (`alertmanager_roles`), and it may never approve, so an approval always names one
    of `users`.
    """

    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    basic_auth: BasicAuthSettings | None = None
    alertmanager_roles: list[AlertmanagerRole] = Field(
        default_factory=lambda: list[AlertmanagerRole](["post_alerts"])
    )
    users: list[UserSettings] = Field(default_factory=list)
    allow_unauthenticated: bool = False
    # Proxies (addresses or CIDR networks) whose X-Forwarded-Proto and X-Forwarded-For are
    # believed: behind a TLS proxy the session cookie keeps its Secure flag.
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list
    )
    # Console sessions live in the journal; this key is no longer used (kept so that existing
    # files still load). Logging out, or changing a user's password or roles, ends sessions.
    session_secret: SecretStr | None = None
    session_ttl: Duration = 12 * 3600.0
    # Guessing: past this many wrong credentials from one address (or from all addresses
    # together) within failure_window, requests presenting credentials get 429.
    max_failures: int = Field(default=10, ge=1)
    max_failures_total: int = Field(default=100, ge=1)
    failure_window: Duration = 60.0

    @model_validator(mode="after")
    def _resolve(self) -> AuthSettings:
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("give at most one of bearer_token or bearer_token_file")
        if self.bearer_token_file is not None:
            secret = read_secret(self.bearer_token_file, "bearer_token_file")
            object.__setattr__(self, "bearer_token", SecretStr(secret))
        if self.bearer_token is not None and not self.bearer_token.get_secret_value():
            raise ValueError("bearer_token is empty")
        if self.allow_unauthenticated and self.has_credentials:
            raise ValueError(
                "allow_unauthenticated cannot be combined with bearer_token, basic_auth or users"
            )
        names = [u.name for u in self.users]
        if self.basic_auth is not None:
            names.append(self.basic_auth.username)
        reserved = sorted(set(names) & RESERVED_NAMES)
        if reserved:
            raise ValueError(
                f"user name {reserved[0]!r} is reserved (it names the bearer token or the "
                "loopback demo in approved_by and the audit trail)"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"user name {dupes[0]!r} is given twice (users and basic_auth share one namespace)"
            )
        return self

    @property
    def has_credentials(self) -> bool:
        return self.bearer_token is not None or self.basic_auth is not None or bool(self.users)

    def secret_token(self) -> str | None:
        return self.bearer_token.get_secret_value() if self.bearer_token else None

    def display(self) -> dict[str, Any]:
        """The settings as plain data: a secret shows as `***` (set) or null (not set)."""
        return {
            "bearer_token": _MASK if self.bearer_token is not None else None,
            "bearer_token_file": str(self.bearer_token_file) if self.bearer_token_file else None,
            "basic_auth": self.basic_auth.display() if self.basic_auth is not None else None,
            "alertmanager_roles": list(self.alertmanager_roles),
            "users": [u.display() for u in self.users],
            "allow_unauthenticated": self.allow_unauthenticated,
            "trusted_proxies": [str(n) for n in self.trusted_proxies],
            "session_secret": _MASK if self.session_secret is not None else None,
            "session_ttl": self.session_ttl,
            "max_failures": self.max_failures,
            "max_failures_total": self.max_failures_total,
            "failure_window": self.failure_window,
        }


class LimitSettings(Model):
    """What one client or one request may cost the healer (`healer.limits`).

    Each limit has its own answer (README, "Limits"): a notification with too many alerts is
    413, a label or annotation too long or too many of them 422 naming where, a request past
    `requests_in_flight` or a log follower past `followers` 503 with Retry-After, a client past
    `followers_per_client` 429.
    """

    # Alerts in one webhook notification (Alertmanager's max_alerts can keep it under this).
    alerts_per_notification: int = Field(default=1000, ge=1)
    # Labels, and annotations, of one alert (each counted on its own).
    labels_per_alert: int = Field(default=64, ge=1)
    # One label or annotation value, or name; also the notification's common and group ones.
    # Under the kernel's 128 KiB limit of one argument, so a value fits in a script's argv.
    label_value: Size = 8 * 1024
    # POST /alerts requests parsed or waiting for the journal at once, in this process. A
    # storm from Alertmanager keeps one per aggregation group in flight: the default lets the
    # benchmark's 10,000 single-alert groups in at once; lower it on a host with little memory.
    requests_in_flight: int = Field(default=10_000, ge=1)
    # Bodies above this are parsed and planned off the event loop (a worker thread).
    parse_in_thread_above: Size = 64 * 1024
    # Live log followers (GET /api/actions/{id}/log?follow=1), in all and per client address.
    followers: int = Field(default=256, ge=1)
    followers_per_client: int = Field(default=16, ge=1)


class HealerSettings(Model):
    """The `healer:` section. Durations in seconds, sizes in bytes once loaded."""

    listen: Listen = "127.0.0.1:9809"
    journal: DatabaseConfig | None = None  # None: an embedded PostgreSQL under data_dir
    data_dir: Path = Path(".taskmedic")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rules: list[str] = Field(default_factory=list)  # globs, relative to the config file
    dry_run: bool = False
    max_body: Size = 1 << 20
    lease: Duration = 30.0
    approval_timeout: Duration = 3600.0
    shutdown_grace: Duration = 30.0
    log_retention: Duration = 30 * 86400.0
    output_cap: Size = 1 << 20
    executor_concurrency: int = Field(default=4, ge=1, le=256)
    limits: LimitSettings = Field(default_factory=LimitSettings)

    @model_validator(mode="after")
    def _journal_is_postgresql(self) -> HealerSettings:
        if self.journal is not None and self.journal.kind != "postgresql":
            raise ValueError("the journal must be a PostgreSQL database")
        return self

    def display(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret masked."""
        out = self.model_dump(mode="json")  # then the sections with secrets, in place
        out["journal"] = self.journal.shown() if self.journal is not None else None
        out["auth"] = self.auth.display()
        return out


class HealerConfig(Config):
    """The whole `taskmedic.yaml` as the healer sees it: the exporter's `Config` and the
    `healer:` section, so one file configures both and a `repair` step can re-run a check."""

    healer: HealerSettings = Field(default_factory=HealerSettings)
    agents: AgentsSettings | None = None  # None: every step runs on the healer's host
    _located: Located | None = PrivateAttr(default=None)
    _base_dir: Path = PrivateAttr(default=Path("."))

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative rule globs and data_dir are resolved from it."""
        return self._base_dir

    def data_dir(self) -> Path:
        d = self.healer.data_dir
        return d if d.is_absolute() else self._base_dir / d

    def display(self) -> dict[str, Any]:
        """The effective config, healer section included, with every secret masked."""
        out = {**super().display(), "healer": self.healer.display()}
        if self.agents is not None:
            out["agents"] = self.agents.display()
        return out

    def loaded_from(self, located: Located) -> None:
        """The exporter's cross-checks; then remember the file, for relative paths and for
        problems found after loading."""
        super().loaded_from(located)
        self._located = located
        self._base_dir = Path(located.file).resolve().parent

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        """A problem located in the config file (used for checks made after loading)."""
        if self._located is not None:
            return self._located.problem(path, message)
        return Problem("<config>", None, ".".join(str(p) for p in path), message)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serving_auth(config: HealerConfig, listen: str | None = None) -> None:
    """Refuse to serve without credentials, except on loopback with an explicit opt-in."""
    auth = config.healer.auth
    if auth.has_credentials:
        return
    host, _ = split_listen(listen or config.healer.listen)
    if not auth.allow_unauthenticated:
        raise ConfigError(
            [
                config.problem(
                    ("healer", "auth"),
                    "no credentials configured: set bearer_token (or bearer_token_file), "
                    "basic_auth or users; `allow_unauthenticated: true` is accepted on a loopback "
                    "listen address only",
                )
            ]
        )
    if not is_loopback(host):
        raise ConfigError(
            [
                config.problem(
                    ("healer", "listen"),
                    f"allow_unauthenticated requires a loopback listen address, not {host!r}",
                )
            ]
        )


def load_healer_config(path: str | Path, env: Mapping[str, str] | None = None) -> HealerConfig:
    """Load and validate `taskmedic.yaml` with its `healer:` section; ConfigError if invalid."""
    return load(HealerConfig, path, env)
