"""The `agents:` section of `taskmedic.yaml`: where steps for other hosts travel.

Remote steps are Celery tasks on per-host queues of the agents' own broker (which may be the
application's, on another database or vhost). An agent started with `--queue NAME` serves host
NAME: it consumes `queue_prefix + NAME`. With `journal` set, agents write their runs' state and
output straight into the journal; without it they report by message on `reply_queue`, and the
healers write what they report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator

from exporter.base import structure_only
from exporter.base.connections import DatabaseConfig, read_secret
from exporter.base.types import Duration, Model, mask_dsn, scrub

__all__ = ["HOST_PATTERN", "AgentsSettings", "HostName"]

# A host name as a queue name may carry it: no spaces, no wildcards of AMQP topic routing.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
HostName = Annotated[str, Field(pattern=HOST_PATTERN)]
_HOST = re.compile(HOST_PATTERN)
MIN_KEY = 16
MIN_KEY = 16


def is_host_name(value: str) -> bool:
    return _HOST.fullmatch(value) is not None


class AgentsSettings(Model):
    """Where agents and the healer meet, and how long a host run may be silent."""

    broker: SecretStr
    # The key healers and agents sign every message with (HMAC-SHA256), in a file both can
    # read: whoever can only publish on the broker cannot make an agent run anything.
    secret_file: Path
    queue_prefix: str = Field(default="taskmedic.agent.", pattern=r"^[A-Za-z0-9_.:-]*$")
    journal: DatabaseConfig | None = None
    reply_queue: str = Field(default="taskmedic.replies", pattern=r"^[A-Za-z0-9_.:-]+$")
    # A running host run whose agent has not renewed for this long is `interrupted`; agents
    # renew every lease/3.
    lease: Duration = 10.0
    # How long a sent run may wait in its queue for an agent, on top of the step's timeout.
    start_timeout: Duration = 10.0
    # Host runs one agent runs at once (Celery's thread pool).
    concurrency: int = Field(default=4, ge=1, le=256)
    # Where an agent records the runs it started, so a redelivered message never starts one
    # twice even when the agent cannot read the journal.
    state_dir: Path = Path("/var/lib/taskmedic-agent")
    # Redis only: an unacknowledged message (its agent died before starting it) is delivered
    # again after this long; the transport's default is an hour.
    visibility_timeout: Duration | None = None
    # Hosts whose agents the healer watches (taskmedic_agent_up); hosts named in rules are
    # watched too.
    hosts: list[HostName] = Field(default_factory=list)

    def broker_url(self) -> str:
        return self.broker.get_secret_value()

    @field_validator("secret_file")
    @classmethod
    def _key_readable(cls, value: Path) -> Path:
        key = read_secret(value, "secret_file")
        if structure_only.active() is None and len(key) < MIN_KEY:
            raise ValueError(
                f"the key in {value} is shorter than {MIN_KEY} characters: write e.g. "
                "`head -c 32 /dev/urandom | base64` into it"
            )
        return value

    def key(self) -> bytes:
        """The signing key (read at each use: replacing the file needs no restart)."""
        return read_secret(self.secret_file, "agents.secret_file").encode()

    def queue(self, host: str) -> str:
        return self.queue_prefix + host

    def scrub(self, text: str) -> str:
        secrets = [self.broker.get_secret_value()]
        if self.journal is not None:
            secrets += self.journal.secrets()
        return scrub(text, secrets)

    def display(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        out["broker"] = mask_dsn(self.broker.get_secret_value())
        out["journal"] = self.journal.shown() if self.journal is not None else None
        return out
