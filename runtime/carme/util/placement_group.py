"""Placement groups (Ray's ``ray.util.placement_group``): reserve bundles of resources.

Arguments are checked here, at call time; the runtime asks the cluster scheduler to
reserve the bundles (all or none) and reports the group's state.
"""

from __future__ import annotations

from typing import Any

from carme._resources import validate_bundles
from carme._scheduler import PG_STRATEGIES

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]


def _runtime() -> Any:
    from carme._context import runtime

    return runtime()


class PlacementGroupID:
    """Id of a placement group; ``hex()`` gives the string form used everywhere."""

    __slots__ = ("_hex",)

    def __init__(self, hex_id: str) -> None:
        if not isinstance(hex_id, str) or not hex_id:
            raise TypeError(f"PlacementGroupID expected a hex string, not {hex_id!r}.")
        self._hex = hex_id

    def hex(self) -> str:
        return self._hex

    def binary(self) -> bytes:
        try:
            return bytes.fromhex(self._hex)
        except ValueError:
            return self._hex.encode()

    def is_nil(self) -> bool:
        return set(self._hex) <= {"f"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __reduce__(self) -> Any:
        return (PlacementGroupID, (self._hex,))

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._hex})"


class PlacementGroup:
    """A handle to a placement group; picklable, equal when ids are equal."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict[str, float]] | None = None) -> None:
        self.id = id
        self.bundle_cache = bundle_cache

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        if self.bundle_cache is None:
            info = _runtime().placement_group_info(self.id.hex())
            bundles = info["bundles"]
            self.bundle_cache = [dict(bundles[i]) for i in sorted(bundles)]
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> Any:
        """An ObjectRef that resolves (to True) when every bundle is reserved."""
        return _runtime().placement_group_ready(self.id.hex())

    def wait(self, timeout_seconds: float | int | None = 30) -> bool:
        """Block until the group is created; False if ``timeout_seconds`` passed first."""
        if timeout_seconds is not None and (
            not isinstance(timeout_seconds, (int, float)) or timeout_seconds < 0
        ):
            raise ValueError(f"timeout_seconds must be None or >= 0, not {timeout_seconds!r}.")
        return bool(_runtime().wait_placement_group(self.id.hex(), timeout_seconds))

    @staticmethod
    def empty() -> PlacementGroup:
        return PlacementGroup(PlacementGroupID("f" * 36))

    def is_empty(self) -> bool:
        return self.id.is_nil()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> Any:
        return (PlacementGroup, (self.id, self.bundle_cache))

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self.bundle_cache})"


def check_placement_group_args(
    bundles: Any, strategy: Any, name: Any, lifetime: Any
) -> list[dict[str, float]]:
    """Validate ``placement_group()`` arguments; return the cleaned bundles."""
    clean = validate_bundles(bundles)
    if strategy not in PG_STRATEGIES:
        raise ValueError(
            f"Invalid placement group strategy {strategy!r}: expected one of "
            f"{', '.join(PG_STRATEGIES)}. Fix: pass strategy=\"PACK\" (default) or \"SPREAD\"."
        )
    if not isinstance(name, str):
        raise TypeError(f"placement group name must be a string, not {name!r}.")
    if lifetime not in (None, "detached"):
        raise ValueError(
            f"Invalid placement group lifetime {lifetime!r}: expected None (owned by the "
            "driver) or \"detached\"."
        )
    return clean


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
    _max_cpu_fraction_per_node: float | None = None,
) -> PlacementGroup:
    """Reserve ``bundles`` with ``strategy`` (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD).

    Returns at once; use ``pg.ready()`` or ``pg.wait()`` to wait for the reservation.
    """
    clean = check_placement_group_args(bundles, strategy, name, lifetime)
    if _max_cpu_fraction_per_node is not None and not (0 < _max_cpu_fraction_per_node <= 1):
        raise ValueError("_max_cpu_fraction_per_node must be in (0, 1].")
    pg_id = _runtime().create_placement_group(clean, strategy, name, lifetime)
    return PlacementGroup(PlacementGroupID(pg_id), clean)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group's reservations; tasks and actors inside it fail."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group expected a PlacementGroup, not {placement_group!r}.")
    _runtime().remove_placement_group(placement_group.id.hex())


def _from_info(info: dict[str, Any]) -> PlacementGroup:
    bundles = info.get("bundles") or {}
    return PlacementGroup(
        PlacementGroupID(info["placement_group_id"]), [dict(bundles[i]) for i in sorted(bundles)]
    )


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live placement group with this name (ValueError if there is none)."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError("get_placement_group expected a non-empty name.")
    try:
        info = _runtime().placement_group_info(name=placement_group_name)
    except (ValueError, KeyError):
        info = None
    if not info or (isinstance(info, dict) and info.get("state") == "REMOVED"):
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return _from_info(info)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """State of one group, or of all groups keyed by id (Ray's table format)."""
    rt = _runtime()
    if placement_group is not None:
        return dict(rt.placement_group_info(placement_group.id.hex()))
    infos = rt.placement_group_info()
    return {info["placement_group_id"]: dict(info) for info in infos}


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the calling task or actor runs in, or None (e.g. the driver)."""
    pg_id = _runtime().current_placement_group_id()
    if not pg_id:
        return None
    return _from_info(_runtime().placement_group_info(pg_id))
