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

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
    "scheduling_strategies",
    "state",
]
