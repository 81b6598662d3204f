"""Utilities with Ray's ``ray.util`` names: placement groups, scheduling strategies, state,
ActorPool."""

from carme.util import scheduling_strategies, state
from carme.util.actor_pool import ActorPool
from carme.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)


def get_node_ip_address() -> str:
    """The IP address of the node this process runs on (Ray's ray.util.get_node_ip_address)."""
    from carme._context import maybe_core
    core = maybe_core()
    if core is not None:
        address = core.info.get("tcp") or ""
        if ":" in address:
            return str(address.rsplit(":", 1)[0])
    return "127.0.0.1"


__all__ = [
    "ActorPool",
    "PlacementGroup",
    "get_current_placement_group",
    "get_node_ip_address",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
    "scheduling_strategies",
    "state",
]
