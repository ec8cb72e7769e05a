"""How to reach a user's database or a Celery cluster: the settings and the driver arguments.

`DatabaseConfig` and `CeleryConfig` are the connection settings of `taskmedic.yaml` that both
halves use. This module is the only place that turns them into what a driver takes: psycopg's
connect arguments, PyMySQL's (from a `mysql://` DSN, TLS options included), and the Celery app
of a cluster. Secrets are read from their files here too, at each use, so a rotated secret is
picked up without a restart.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from exporter.base import structure_only
from exporter.base.types import Duration, Model, mask_dsn, scrub

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "CeleryConfig",
    "DatabaseConfig",
    "celery_app",
    "dsn_kind",
    "mysql_connect_args",
    "parse_mysql_dsn",
    "pg_connect_args",
    "read_secret",
    "url_password",
    "validate_dsn",
]


def read_secret(path: Path, what: str) -> str:
    """The content of a secret file, stripped; the error names the file, never the content.

    When only the structure is checked (`config check --structure-only`), nothing is read.
    """
    record = structure_only.active()
    if record is not None:
        record.note(record.files, str(path))
        return structure_only.PLACEHOLDER
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


# --- DSNs -----------------------------------------------------------------------------------

_MYSQL_OPTIONS = {
    "unix_socket": str,
    "charset": str,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
    "ssl_verify_cert": bool,
    "ssl_verify_identity": bool,
}


def dsn_kind(raw: str) -> Literal["postgresql", "mysql"]:
    """Which driver a DSN needs, from its scheme; the error never echoes the DSN."""
    scheme = urlsplit(raw).scheme.split("+")[0].lower() if "://" in raw else ""
    if scheme in ("postgresql", "postgres") or (not scheme and "=" in raw):
        return "postgresql"
    if scheme in ("mysql", "mariadb"):
        parse_mysql_dsn(raw)
        return "mysql"
    raise ValueError(
        "dsn must start with postgresql://, postgres://, mysql:// or mariadb:// "
        "(or be a libpq key=value string)"
    )


def validate_dsn(raw: str) -> Literal["postgresql", "mysql"]:
    """`dsn_kind`, and the DSN parsed as its driver will parse it: a DSN the driver would
    refuse (an unencoded `%` in the password) fails when the config loads, not later in a
    driver error that quotes it. The error never echoes the DSN or any part of it."""
    kind = dsn_kind(raw)
    if "://" in raw and raw.split("://", 1)[1].split("/", 1)[0].count("@") > 1:
        raise ValueError("dsn has an unencoded @ in its user or password: write it as %40")
    if kind == "postgresql":
        from psycopg import ProgrammingError  # here: only a PostgreSQL DSN needs psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(raw)
        except ProgrammingError:
            raise ValueError(
                "dsn is not a valid PostgreSQL connection string (in a URL, percent-encode a "
                "%, @, / or : in the password: % as %25; in key=value form, quote values "
                "with spaces)"
            ) from None
    return kind


def url_password(url: str) -> str:
    """The password of a URL as written, user info taken up to the last `@` ('' if none)."""
    if "://" not in url:
        return ""
    authority = url.split("://", 1)[1]
    userinfo = authority.rpartition("@")[0] if "@" in authority else ""
    return userinfo.split(":", 1)[1] if ":" in userinfo else ""


def _secrets_of_url(url: str) -> list[str]:
    password = url_password(url)
    return [url, password, unquote(password)]


def parse_mysql_dsn(dsn: str) -> dict[str, Any]:
    """`mysql://user:pass@host:port/db?ssl_ca=...` -> pymysql.connect() keyword arguments.

    Percent-escapes in the user, password and database are decoded. Every option a DSN may
    carry (the TLS ones included) is passed on; an unknown one is an error, so that a typo in
    `ssl_ca` cannot silently connect without TLS. Errors name the part that is wrong, never
    its value (it may be the password).
    """
    parts = urlsplit(dsn)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("dsn has an invalid port") from None
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port or 3306,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else "",
        "database": unquote(parts.path.lstrip("/")) or None,
    }
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _MYSQL_OPTIONS.get(key)
        if kind is None:
            known = ", ".join(sorted(_MYSQL_OPTIONS))
            raise ValueError(f"dsn has an unknown MySQL option {key!r} (known: {known})")
        if kind is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"dsn option {key} must be true or false")
            args[key] = value.lower() in ("1", "true", "yes")
        else:
            args[key] = value
    return args


# --- settings -------------------------------------------------------------------------------


class DatabaseConfig(Model):
    """A user's database. The DSN scheme picks the driver.

    `max_connections` bounds how many checks query it at once (each on its own connection),
    so a hundred checks never open a hundred connections to a user's database.
    """

    dsn: SecretStr | None = None
    dsn_file: Path | None = None
    password_file: Path | None = None
    connect_timeout: Duration = 5.0
    max_connections: int = Field(default=4, ge=1, le=64)

    @field_validator("dsn")
    @classmethod
    def _dsn_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            validate_dsn(value.get_secret_value())
        return value

    @field_validator("dsn_file")
    @classmethod
    def _dsn_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and structure_only.active() is None:
            validate_dsn(read_secret(value, "dsn_file"))
        return value

    @field_validator("password_file")
    @classmethod
    def _password_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_secret(value, "password_file")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> DatabaseConfig:
        if (self.dsn is None) == (self.dsn_file is None):
            raise ValueError("give exactly one of dsn or dsn_file")
        if self.dsn_file is not None:
            dsn = read_secret(self.dsn_file, "dsn_file")
            if structure_only.active() is not None:
                dsn = structure_only.PLACEHOLDER_DSN
            object.__setattr__(self, "dsn", SecretStr(dsn))
        return self

    @property
    def kind(self) -> Literal["postgresql", "mysql"]:
        return dsn_kind(self.dsn.get_secret_value() if self.dsn else "")

    def secret_dsn(self) -> str:
        """The DSN as written (or read from `dsn_file`); never log this value.

        A `password_file` is not merged into it: pass `password()` to the driver separately.
        """
        assert self.dsn is not None
        return self.dsn.get_secret_value()

    def password(self) -> str | None:
        """The content of `password_file` (read at each call, so a rotated secret is used)."""
        return read_secret(self.password_file, "password_file") if self.password_file else None

    def display(self) -> str:
        return mask_dsn(self.secret_dsn())

    def secrets(self) -> list[str]:
        """Every secret of this database a driver's error could quote: the DSN, its password
        (as written, decoded, and as libpq reads it), the password file's content."""
        dsn = self.secret_dsn() if self.dsn is not None else ""
        found = _secrets_of_url(dsn)
        if self.kind == "postgresql":
            import psycopg  # here: loading a config needs no driver
            from psycopg.conninfo import conninfo_to_dict

            with contextlib.suppress(psycopg.Error):  # unparsable: the others still count
                found.append(str(conninfo_to_dict(dsn).get("password") or ""))
        with contextlib.suppress(ValueError):
            found.append(self.password() or "")
        return found

    def scrub(self, text: str) -> str:
        """`text` with every secret of this database hidden: how a driver error is shown."""
        return scrub(text, self.secrets())

    def shown(self) -> dict[str, Any]:
        """The settings as plain data, the DSN's password masked."""
        out: dict[str, Any] = {"dsn": self.display()}
        if self.dsn_file is not None:
            out["dsn_file"] = str(self.dsn_file)
        if self.password_file is not None:
            out["password_file"] = str(self.password_file)
        out["connect_timeout"] = self.connect_timeout
        out["max_connections"] = self.max_connections
        return out


class CeleryConfig(Model):
    """A Celery cluster: where its broker and result backend are, and how to judge liveness."""

    broker: SecretStr
    backend: SecretStr | None = None
    queues: list[str] = Field(default_factory=lambda: ["celery"])
    inspect_timeout: Duration = 1.0
    purge_offline_after: Duration = 300.0
    # A worker that crashed (no goodbye) stays listed as crashed until it comes back, or
    # this long if set; unset, its alert cannot resolve unless a worker of that name returns.
    forget_crashed_after: Duration | None = None
    # Ask workers to send task events (Celery's `enable_events` control command), for
    # workers started without -E. Off by default: it changes the workers' behaviour.
    enable_events: bool = False

    def secrets(self) -> list[str]:
        """The broker's and result backend's URLs and their passwords."""
        found = _secrets_of_url(self.broker.get_secret_value())
        if self.backend is not None:
            found += _secrets_of_url(self.backend.get_secret_value())
        return found

    def scrub(self, text: str) -> str:
        """`text` with every secret of this cluster hidden: how a broker error is shown."""
        return scrub(text, self.secrets())

    def display(self) -> dict[str, Any]:
        return {
            "broker": mask_dsn(self.broker.get_secret_value()),
            "backend": mask_dsn(self.backend.get_secret_value()) if self.backend else None,
            "queues": self.queues,
            "inspect_timeout": self.inspect_timeout,
            "purge_offline_after": self.purge_offline_after,
            "forget_crashed_after": self.forget_crashed_after,
            "enable_events": self.enable_events,
        }


# --- driver arguments -----------------------------------------------------------------------


def pg_connect_args(config: DatabaseConfig, *, application_name: str) -> dict[str, Any]:
    """psycopg's connect() keyword arguments, the DSN as `conninfo`; never log them.

    `application_name` names taskmedic in `pg_stat_activity` unless the DSN names itself.
    libpq waits at least 2 seconds to connect whatever it is given.
    """
    from psycopg.conninfo import conninfo_to_dict  # here: loading a config needs no driver

    dsn = config.secret_dsn()
    args: dict[str, Any] = {
        "conninfo": dsn,
        "connect_timeout": max(2, math.ceil(config.connect_timeout)),
        "autocommit": False,
    }
    if "application_name" not in conninfo_to_dict(dsn):
        args["application_name"] = application_name
    password = config.password()
    if password is not None:
        args["password"] = password
    return args


def mysql_connect_args(config: DatabaseConfig) -> dict[str, Any]:
    """PyMySQL's connect() keyword arguments: the DSN's, TLS options included; never log them.

    A `password_file` replaces the DSN's password. utf8mb4 unless the DSN names a charset.
    """
    args: dict[str, Any] = {"charset": "utf8mb4", **parse_mysql_dsn(config.secret_dsn())}
    password = config.password()
    if password is not None:
        args["password"] = password
    args["connect_timeout"] = max(1.0, config.connect_timeout)
    return args


# --- Celery ---------------------------------------------------------------------------------

# Seconds a broker or result backend may take to answer one command.
_SOCKET_TIMEOUT = 5.0


def celery_app(config: CeleryConfig, *, name: str) -> Celery:
    """The Celery app of cluster `name`: the exporter reads through it, the healer sends.

    A broker or Redis backend that accepts the connection but never answers must not hang a
    check, the event thread or a step for ever: every socket read gives up in time. The app
    creates nothing of its own (a database result backend is read, not set up; inspect and
    event queues are auto-deleted by the broker), a backend that is down fails the call now,
    and a task is published at most three times before its step fails.
    """
    from celery import Celery  # here: loading a config needs no Celery

    app = Celery(
        f"taskmedic-{name}",
        broker=config.broker.get_secret_value(),
        backend=config.backend.get_secret_value() if config.backend else None,
        set_as_current=False,
    )
    app.conf.update(
        database_create_tables_at_setup=False,
        result_backend_always_retry=False,
        broker_connection_timeout=_SOCKET_TIMEOUT,
        broker_connection_retry_on_startup=False,
        broker_heartbeat=10,  # AMQP: a silent broker is noticed in ~20 s, not Celery's 4 min
        redis_socket_connect_timeout=_SOCKET_TIMEOUT,
        redis_socket_timeout=_SOCKET_TIMEOUT,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2},
    )
    if app.connection_for_read().transport.driver_type == "redis":
        app.conf.broker_transport_options = {
            "socket_connect_timeout": _SOCKET_TIMEOUT,
            "socket_timeout": _SOCKET_TIMEOUT,
        }
    return app
