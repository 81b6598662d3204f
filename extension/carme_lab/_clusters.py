"""The clusters one Jupyter server knows about, and which one is selected.

Theory of operation
-------------------
`ClusterBook` is pure bookkeeping (no I/O): the server shell feeds it what it
learned and asks it for listings.

A cluster is known by its address ("HOST:PORT"), which is also its id in the
REST API. It reaches the book from four origins:

- ``started``: this server started it (``POST /carme/api/clusters``);
- ``local``: carme on this machine started it (``carme start --head``, another
  server): `listing()` merges the rows of `carme.cluster.list_local()`;
- ``connected``: a user gave its address (``POST /carme/api/connect``);
- ``env``: the server was started with ``CARME_ADDRESS`` set.

One address at most is *selected*; kernels started afterwards join it (the
server shell exports it as ``CARME_ADDRESS``). No selection means kernels start
an embedded cluster of their own. Stopping the selected cluster clears the
selection. Only clusters running on this machine can be stopped from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Origin = Literal["started", "local", "connected", "env"]

__all__ = ["AddressError", "ClusterBook", "ClusterEntry", "Origin", "check_address"]


class AddressError(ValueError):
    """An address that is not HOST:PORT."""


def check_address(address: object) -> str:
    """Return `address` stripped if it looks like HOST:PORT, else raise AddressError."""
    if not isinstance(address, str):
        raise AddressError(
            f"expected a cluster address as a string HOST:PORT (e.g. 127.0.0.1:6380), "
            f"got {type(address).__name__} {address!r}")
    text = address.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(
            f"expected a cluster address HOST:PORT with a port in 1..65535 "
            f"(e.g. 127.0.0.1:6380), got {address!r}; `carme status` prints the addresses "
            f"of clusters running on this machine")
    if any(c.isspace() or c in "/?#" for c in host):
        raise AddressError(f"expected a host name or IP before ':PORT', got {host!r} in {address!r}")
    return text


@dataclass
class ClusterEntry:
    """One known cluster, as the REST API lists it."""

    address: str
    origin: Origin
    pid: int | None = None
    started: float | None = None
    alive: bool | None = None  # None: not on this machine, unknown until connected
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        """Running on this machine, started by carme (so it can be stopped from here)."""
        return self.pid is not None

    def to_json(self, selected: str | None) -> dict[str, Any]:
        return {
            "id": self.address,
            "address": self.address,
            "origin": self.origin,
            "pid": self.pid,
            "started": self.started,
            "alive": self.alive,
            "local": self.local,
            "resources": dict(self.resources),
            "selected": self.address == selected,
        }


class ClusterBook:
    """What one server knows: clusters it started, addresses it was given, the selection."""

    def __init__(self, given: str | None = None) -> None:
        self._started: dict[str, ClusterEntry] = {}
        self._given: dict[str, ClusterEntry] = {}
        self.selected: str | None = None
        if given:
            address = check_address(given)
            self._given[address] = ClusterEntry(address, "env")
            self.selected = address

    # ------------------------------------------------------------------ changes
    def add_started(self, info: dict[str, Any]) -> ClusterEntry:
        """Record a cluster this server started (`carme.cluster.start_head()`'s dict)."""
        address = check_address(info.get("address"))
        entry = ClusterEntry(
            address, "started", pid=info.get("pid"), started=info.get("started"),
            alive=True, resources=dict(info.get("resources") or {}))
        self._started[address] = entry
        return entry

    def remember(self, address: object) -> str:
        """Remember an address given by a user; return it normalized."""
        text = check_address(address)
        if text not in self._started and text not in self._given:
            self._given[text] = ClusterEntry(text, "connected")
        return text

    def select(self, address: str | None) -> None:
        self.selected = address

    def stopped(self, address: str) -> None:
        """Forget a cluster that was stopped; clear the selection if it was selected."""
        self._started.pop(address, None)
        self._given.pop(address, None)
        if self.selected == address:
            self.selected = None

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """What survives a server restart: the selection and the addresses users gave."""
        return {
            "selected": self.selected,
            "connected": [a for a, e in self._given.items() if e.origin == "connected"],
        }

    def restore(self, state: object, local_rows: list[dict[str, Any]]) -> None:
        """Take back `to_state()`'s dict from before a restart.

        A given ``CARME_ADDRESS`` (origin ``env``) wins over the saved selection. A saved
        selection that was a cluster on this machine which no longer runs is dropped.
        Anything malformed is ignored: the saved state is a convenience, not a contract.
        """
        if not isinstance(state, dict):
            return
        for address in state.get("connected") or []:
            try:
                self.remember(address)
            except AddressError:
                continue
        selected = state.get("selected")
        if self.selected is not None or not isinstance(selected, str):
            return
        try:
            selected = check_address(selected)
        except AddressError:
            return
        local = {r.get("address") for r in local_rows}
        if selected in local or selected in self._given:
            self.selected = selected

    # ------------------------------------------------------------------ queries
    def entries(self, local_rows: list[dict[str, Any]]) -> list[ClusterEntry]:
        """Every known cluster, started ones first, then local ones, then given addresses.

        `local_rows` are `carme.cluster.list_local()`'s rows (live clusters on this
        machine). A cluster this server started that is no longer among them has
        died: it is kept, marked not alive, until it is stopped or forgotten.
        """
        local = {}
        for row in local_rows:
            try:
                local[check_address(row.get("address"))] = row
            except AddressError:
                continue
        out: list[ClusterEntry] = []
        seen: set[str] = set()
        for address, entry in self._started.items():
            entry.alive = address in local
            out.append(entry)
            seen.add(address)
        for address, info in local.items():
            if address in seen:
                continue
            given = self._given.get(address)
            out.append(ClusterEntry(
                address, given.origin if given else "local", pid=info.get("pid"),
                started=info.get("started"), alive=True,
                resources=dict(info.get("resources") or {})))
            seen.add(address)
        for address, entry in self._given.items():
            if address not in seen:
                out.append(entry)
                seen.add(address)
        if self.selected is not None and self.selected not in seen:
            # a local cluster that was selected and has gone away (stopped elsewhere)
            out.append(ClusterEntry(self.selected, "local", alive=False))
        return out

    def find(self, address: str, local_rows: list[dict[str, Any]]) -> ClusterEntry | None:
        return next((e for e in self.entries(local_rows) if e.address == address), None)

    def listing(self, local_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The JSON body of ``GET /carme/api/clusters``."""
        entries = self.entries(local_rows)
        return {
            "clusters": [e.to_json(self.selected) for e in entries],
            "selected": self.selected,
        }
