"""Network namespaces for the tests of steps on other hosts: each "host" is a namespace of its
own joined to the machine by a veth pair, so its agent reaches the broker and the journal
across a real link that a test can take down (`cut()`) and bring back (`restore()`).

The machine's Redis and PostgreSQL listen on 127.0.0.1 only: in the root namespace a
`TcpLink` per service listens on the root side of the veth and forwards to loopback, so the
services see local clients (PostgreSQL's trust rules apply) and nothing is exposed beyond the
pair. Creating namespaces needs root and `ip netns`; `netns_unavailable()` says why not.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.celery_helpers import TcpLink


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def netns_unavailable() -> str | None:
    """None when this process may create network namespaces; else the reason it may not."""
    if shutil.which("ip") is None:
        return "the `ip` command of iproute2 is not installed"
    if os.geteuid() != 0:
        return "`ip netns add` needs root"
    probe = f"tm-probe-{uuid.uuid4().hex[:6]}"
    added = ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    ip("netns", "delete", probe, check=False)
    return None


def _subnets_in_use() -> set[int]:
    out = ip("-4", "-o", "addr", "show").stdout
    return {int(word.split(".")[2]) for word in out.split() if word.startswith("10.77.")}


def _relay(host: str, port: int, bind: str) -> TcpLink:
    def upstream() -> socket.socket:
        return socket.create_connection((host, port), timeout=5)

    link = TcpLink(upstream, bind=bind)
    link.restore()
    return link


def _via(url: str, host: str, port: int) -> str:
    """`url` with its host:port replaced (user and path kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{host}:{port}" if user else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Netns:
    """One namespace: `name`, the veth pair (`root_dev` in the root namespace, `ns_dev`
    inside), the root side's address `gateway`; `relays` forward gateway ports to loopback."""

    name: str
    root_dev: str
    ns_dev: str
    gateway: str
    address: str
    relays: dict[tuple[str, int], TcpLink] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        """Prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def relay(self, host: str, port: int) -> int:
        """The gateway port that forwards to host:port (a relay started on first use)."""
        if (host, port) not in self.relays:
            self.relays[host, port] = _relay(host, port, self.gateway)
        return self.relays[host, port].port

    def relay_port(self, url: str) -> int:
        parts = urlsplit(url)
        return self.relay(parts.hostname or "127.0.0.1", parts.port or 0)

    def reach(self, url: str) -> str:
        """`url` (a service on 127.0.0.1) as seen from inside: through a relay on the gateway."""
        return _via(url, self.gateway, self.relay_port(url))

    def reach_pg(self, dsn: str) -> str:
        """A PostgreSQL DSN (URL or key=value) as seen from inside."""
        info = conninfo_to_dict(dsn)
        port = self.relay(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
        info.update(host=self.gateway, port=str(port), hostaddr=None)
        return make_conninfo(**{k: v for k, v in info.items() if v is not None})  # type: ignore[arg-type]

    def cut(self) -> None:
        """Take the link down on the root side: packets stop, no connection is closed."""
        ip("link", "set", "dev", self.root_dev, "down")

    def restore(self) -> None:
        ip("link", "set", "dev", self.root_dev, "up")

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *argv], capture_output=True, text=True, check=False, timeout=10
        )

    def delete(self) -> None:
        for relay in self.relays.values():
            relay.cut()
        ip("link", "delete", self.root_dev, check=False)  # takes its peer with it
        ip("netns", "delete", self.name, check=False)


def make_namespaces(suffixes: Sequence[str]) -> list[Netns]:
    """A namespace per suffix (`tm-<rand>-<suffix>`), each on a /30 of 10.77.0.0/16 no
    interface of the machine uses: .1 on the root side, .2 inside, lo and both ends up."""
    tag = uuid.uuid4().hex[:6]
    free = sorted(set(range(1, 255)) - _subnets_in_use())
    made: list[Netns] = []
    try:
        for suffix, n in zip(suffixes, random.sample(free, len(suffixes)), strict=True):
            ns = Netns(
                name=f"tm-{tag}-{suffix}",
                root_dev=f"tm{tag}{suffix}r"[:15],
                ns_dev=f"tm{tag}{suffix}n"[:15],
                gateway=f"10.77.{n}.1",
                address=f"10.77.{n}.2",
            )
            ip("netns", "add", ns.name)
            made.append(ns)
            ip("link", "add", ns.root_dev, "type", "veth", "peer", "name", ns.ns_dev)
            ip("link", "set", ns.ns_dev, "netns", ns.name)
            ip("addr", "add", f"{ns.gateway}/30", "dev", ns.root_dev)
            ip("link", "set", ns.root_dev, "up")
            inside = ["-n", ns.name]
            ip(*inside, "addr", "add", f"{ns.address}/30", "dev", ns.ns_dev)
            ip(*inside, "link", "set", ns.ns_dev, "up")
            ip(*inside, "link", "set", "lo", "up")
    except BaseException:
        for ns in made:
            ns.delete()
        raise
    return made
