"""The clusters one Jupyter server knows about, and which one is selected.

Theory of operation
-------------------
`ClusterBook` is pure bookkeeping (no I/O): the server shell feeds it what it
learned and asks it for listings.

A cluster is known by its id, which is also its address in the REST API:

- ``HOST:PORT``: a carme cluster (``carme start --head``);
- ``ray:HOST:PORT``: a Ray cluster, by its GCS address (what ``ray start`` prints,
  and what kernels join through ``CARME_ADDRESS=ray:HOST:PORT`` or the selection);
- ``embedded:PID``: the embedded carme cluster of a running kernel (or any
  driver), whose node daemon runs as PID; only watched from here, never joined
  or stopped.

A cluster reaches the book from four origins:

- ``started``: this server started it (``POST /carme/api/clusters``);
- ``local``: something else on this machine started it (``carme start --head``,
  another server, a kernel's embedded cluster, ``ray start``): `listing()`
  merges the rows the backend found (`Backend.list_local()`);
- ``connected``: a user gave its address (``POST /carme/api/connect``);
- ``env``: the server was started with ``CARME_ADDRESS`` set.

One address at most is *selected*; kernels join it when they first join a
cluster (the server shell writes it to a selection file whose path kernels
carry, see `_service`). No selection means kernels start an embedded cluster of
their own. Stopping the selected cluster clears the
selection. Only clusters this server started, and carme clusters started on this
machine, can be stopped from here.

The panel *shows* one cluster (`showing`): the one a user chose to watch
(``POST /carme/api/view``, e.g. a kernel's embedded cluster, which changes
nothing for kernels), else the selected one, else the newest embedded cluster
of a running kernel, so a notebook running tasks is visible without any setup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Origin = Literal["started", "local", "connected", "env"]
Engine = Literal["carme", "ray"]
Kind = Literal["cluster", "embedded"]

__all__ = ["AddressError", "ClusterBook", "ClusterEntry", "Engine", "Kind", "Origin",
           "check_address", "check_joinable", "engine_of", "kind_of"]


class AddressError(ValueError):
    """An address that is not HOST:PORT."""


_HINT = ("e.g. 127.0.0.1:6380 for carme, ray:127.0.0.1:6379 for a Ray cluster's GCS address; "
         "`carme status` and `ray status` print the addresses of clusters on this machine")


def _host_port(text: str, given: object) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(
            f"expected a cluster address HOST:PORT with a port in 1..65535 ({_HINT}), "
            f"got {given!r}")
    if any(c.isspace() or c in "/?#" for c in host):
        raise AddressError(f"expected a host name or IP before ':PORT', got {host!r} in {given!r}")
    return text


def check_address(address: object) -> str:
    """Return `address` stripped if it is an id listed above, else raise AddressError."""
    if not isinstance(address, str):
        raise AddressError(
            f"expected a cluster address as a string HOST:PORT ({_HINT}), "
            f"got {type(address).__name__} {address!r}")
    text = address.strip()
    if text.startswith("ray://"):
        raise AddressError(
            f"{address!r} is a Ray Client address; the panel reads a Ray cluster's state from "
            f"its dashboard and needs the GCS address instead: ray:HOST:PORT (port 6379 unless "
            f"`ray start --port` chose another)")
    if text.startswith("ray:"):
        return "ray:" + _host_port(text[4:].strip(), address)
    if text.startswith("embedded:"):
        pid = text[len("embedded:"):]
        if not pid.isdigit() or int(pid) <= 0:
            raise AddressError(f"expected embedded:PID with the PID of a node daemon, got {address!r}")
        return f"embedded:{int(pid)}"
    return _host_port(text, address)


def check_joinable(address: object) -> str:
    """`check_address`, refusing ids kernels cannot join (embedded clusters)."""
    text = check_address(address)
    if kind_of(text) == "embedded":
        raise AddressError(
            f"{text} is the embedded cluster of a running kernel: it lives and dies with that "
            f"kernel, so other kernels cannot join it. Watch it (POST /carme/api/view), or start "
            f"a cluster kernels can share")
    return text


def engine_of(address: str) -> Engine:
    return "ray" if address.startswith("ray:") else "carme"


def kind_of(address: str) -> Kind:
    return "embedded" if address.startswith("embedded:") else "cluster"


@dataclass
class ClusterEntry:
    """One known cluster, as the REST API lists it."""

    address: str
    origin: Origin
    pid: int | None = None
    started: float | None = None
    alive: bool | None = None  # None: not on this machine, unknown until connected
    resources: dict[str, float] = field(default_factory=dict)
    notebook: str | None = None  # embedded: the notebook of the kernel that runs it
    dashboard: str | None = None  # ray: the dashboard URL (state REST API)
    owned: bool = False  # started by a carme_lab server (its record says so)

    @property
    def engine(self) -> Engine:
        return engine_of(self.address)

    @property
    def kind(self) -> Kind:
        return kind_of(self.address)

    @property
    def local(self) -> bool:
        """Running on this machine (a process of it is known here)."""
        return self.pid is not None

    @property
    def stoppable(self) -> bool:
        """Can be stopped from here: started by a carme_lab server, or a carme cluster of
        this machine; never a kernel's embedded cluster or a Ray cluster started otherwise."""
        if self.kind == "embedded":
            return False
        if self.origin == "started" or self.owned:
            return True
        return self.local and self.engine == "carme"

    def to_json(self, selected: str | None, showing: str | None = None) -> dict[str, Any]:
        return {
            "id": self.address,
            "address": self.address,
            "engine": self.engine,
            "kind": self.kind,
            "origin": self.origin,
            "pid": self.pid,
            "started": self.started,
            "alive": self.alive,
            "local": self.local,
            "stoppable": self.stoppable,
            "joinable": self.kind != "embedded",
            "notebook": self.notebook,
            "dashboard": self.dashboard,
            "resources": dict(self.resources),
            "selected": self.address == selected,
            "showing": self.address == showing,
        }


class ClusterBook:
    """What one server knows: clusters it started, addresses it was given, the selection."""

    def __init__(self, given: str | None = None) -> None:
        self._started: dict[str, ClusterEntry] = {}
        self._given: dict[str, ClusterEntry] = {}
        self.selected: str | None = None
        self.viewed: str | None = None  # chosen to watch; None: follow the selection
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
            alive=True, resources=dict(info.get("resources") or {}),
            dashboard=info.get("dashboard"))
        self._started[address] = entry
        return entry

    def remember(self, address: object, dashboard: str | None = None) -> str:
        """Remember an address given by a user (and a Ray cluster's dashboard URL); return
        the address normalized."""
        text = check_joinable(address)
        if text not in self._started and text not in self._given:
            self._given[text] = ClusterEntry(text, "connected")
        if dashboard is not None and text in self._given:
            self._given[text].dashboard = dashboard
        return text

    def dashboards(self) -> dict[str, str]:
        """Dashboard URLs users gave, by address."""
        return {a: e.dashboard for a, e in self._given.items() if e.dashboard}

    def select(self, address: str | None) -> None:
        """Select `address` for kernels (None: none); the panel then shows it."""
        self.selected = address
        self.viewed = None

    def view(self, address: str | None) -> None:
        """Show `address` in the panel without changing what kernels join (None: follow)."""
        self.viewed = address

    def stopped(self, address: str) -> None:
        """Forget a cluster that was stopped; clear the selection if it was selected."""
        self._started.pop(address, None)
        self._given.pop(address, None)
        if self.selected == address:
            self.selected = None
        if self.viewed == address:
            self.viewed = None

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """What survives a server restart: the selection and the addresses users gave."""
        return {
            "selected": self.selected,
            "connected": [a for a, e in self._given.items() if e.origin == "connected"],
            "dashboards": self.dashboards(),
        }

    def restore(self, state: object, local_rows: list[dict[str, Any]]) -> None:
        """Take back `to_state()`'s dict from before a restart.

        A given ``CARME_ADDRESS`` (origin ``env``) wins over the saved selection. A saved
        selection that was a cluster on this machine which no longer runs is dropped.
        Anything malformed is ignored: the saved state is a convenience, not a contract.
        """
        if not isinstance(state, dict):
            return
        dashboards = state.get("dashboards")
        dashboards = dashboards if isinstance(dashboards, dict) else {}
        for address in state.get("connected") or []:
            url = dashboards.get(address) if isinstance(address, str) else None
            try:
                self.remember(address, url if isinstance(url, str) else None)
            except AddressError:
                continue
        selected = state.get("selected")
        if self.selected is not None or not isinstance(selected, str):
            return
        try:
            selected = check_joinable(selected)
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
                resources=dict(info.get("resources") or {}),
                notebook=info.get("notebook"), dashboard=info.get("dashboard"),
                owned=info.get("owned") is True))
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

    def showing(self, entries: list[ClusterEntry]) -> str | None:
        """The cluster the panel shows (see the module docstring)."""
        alive = {e.address for e in entries if e.alive is not False}
        if self.viewed is not None and self.viewed in alive:
            return self.viewed
        if self.selected is not None:
            return self.selected
        embedded = [e for e in entries if e.kind == "embedded" and e.alive]
        if embedded:
            return max(embedded, key=lambda e: e.started or 0.0).address
        return None

    def listing(self, local_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The JSON body of ``GET /carme/api/clusters``."""
        entries = self.entries(local_rows)
        showing = self.showing(entries)
        return {
            "clusters": [e.to_json(self.selected, showing) for e in entries],
            "selected": self.selected,
            "showing": showing,
        }
