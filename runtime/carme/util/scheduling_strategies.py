"""Scheduling strategies (Ray's ``ray.util.scheduling_strategies``), checked when built.

:func:`to_scheduler_strategy` turns what a user passed (``scheduling_strategy=`` plus
the older ``placement_group=`` options) into the scheduler's own dataclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carme._scheduler import (
    BundleStrategy,
    DefaultStrategy,
    NodeAffinity,
    NodeLabel,
    SpreadStrategy,
    Strategy,
)

if TYPE_CHECKING:
    from carme.util.placement_group import PlacementGroup

__all__ = [
    "DoesNotExist",
    "Exists",
    "In",
    "NodeAffinitySchedulingStrategy",
    "NodeLabelSchedulingStrategy",
    "NotIn",
    "PlacementGroupSchedulingStrategy",
    "SchedulingStrategyT",
    "parse_label_selector",
    "to_scheduler_strategy",
]


def _check_bool(value: Any, what: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {value!r}.")


class PlacementGroupSchedulingStrategy:
    """Run in a placement group's bundle (index -1: any bundle with room)."""

    def __init__(
        self,
        placement_group: PlacementGroup | None,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        from carme.util.placement_group import PlacementGroup

        if placement_group is not None and not isinstance(placement_group, PlacementGroup):
            raise TypeError(
                "PlacementGroupSchedulingStrategy expected the PlacementGroup returned by "
                f"carme.util.placement_group(...), not {placement_group!r}."
            )
        index = placement_group_bundle_index
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"placement_group_bundle_index must be an int, not {index!r}.")
        if index < -1:
            raise ValueError(
                f"placement_group_bundle_index={index} is invalid: expected -1 (any bundle) "
                "or a bundle index starting at 0."
            )
        if placement_group is not None and index >= placement_group.bundle_count:
            raise ValueError(
                f"placement_group_bundle_index={index} is out of range: the placement group has "
                f"{placement_group.bundle_count} bundles. Fix: pass 0..{placement_group.bundle_count - 1} "
                "or -1."
            )
        _check_bool(placement_group_capture_child_tasks, "placement_group_capture_child_tasks", True)
        self.placement_group = placement_group
        self.placement_group_bundle_index = index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupSchedulingStrategy) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.placement_group, self.placement_group_bundle_index))

    def __repr__(self) -> str:
        return (
            f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
            f"placement_group_bundle_index={self.placement_group_bundle_index})"
        )


class NodeAffinitySchedulingStrategy:
    """Run on one node; with ``soft=True`` fall back to others if it is dead or can't fit."""

    def __init__(
        self,
        node_id: str,
        soft: bool,
        _spill_on_unavailable: bool = False,
        _fail_on_unavailable: bool = False,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(
                f"NodeAffinitySchedulingStrategy expected node_id as a hex string (see "
                f"carme.nodes() or carme.get_runtime_context().get_node_id()), not {node_id!r}."
            )
        _check_bool(soft, "soft")
        _check_bool(_spill_on_unavailable, "_spill_on_unavailable")
        _check_bool(_fail_on_unavailable, "_fail_on_unavailable")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeAffinitySchedulingStrategy) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.node_id, self.soft))

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class _LabelOperator:
    op = ""

    def __init__(self, *values: str) -> None:
        for v in values:
            if not isinstance(v, str):
                raise TypeError(f"{type(self).__name__} expected string label values, not {v!r}.")
        self.values = tuple(values)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.values == self.values  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.op, self.values))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.values))})"


class In(_LabelOperator):
    op = "in"

    def __init__(self, *values: str) -> None:
        if not values:
            raise ValueError("In() needs at least one value, e.g. In('a100').")
        super().__init__(*values)


class NotIn(_LabelOperator):
    op = "not_in"

    def __init__(self, *values: str) -> None:
        if not values:
            raise ValueError("NotIn() needs at least one value.")
        super().__init__(*values)


class Exists(_LabelOperator):
    op = "exists"

    def __init__(self) -> None:
        super().__init__()


class DoesNotExist(_LabelOperator):
    op = "does_not_exist"

    def __init__(self) -> None:
        super().__init__()


def _label_terms(spec: Any, what: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        raise TypeError(f"{what} must be a dict of label names to In/NotIn/Exists/DoesNotExist, not {spec!r}.")
    terms = []
    for key, cond in spec.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{what}: label names must be non-empty strings, not {key!r}.")
        if isinstance(cond, str):
            cond = In(cond)
        if not isinstance(cond, _LabelOperator):
            raise TypeError(
                f"{what}[{key!r}] must be In(...), NotIn(...), Exists() or DoesNotExist(), "
                f"not {cond!r}."
            )
        terms.append((key, cond.op, cond.values))
    return tuple(terms)


class NodeLabelSchedulingStrategy:
    """Run on nodes whose labels match ``hard``; prefer those that also match ``soft``."""

    def __init__(self, hard: dict[str, Any], *, soft: dict[str, Any] | None = None) -> None:
        self._hard_terms = _label_terms(hard, "hard")
        self._soft_terms = _label_terms(soft, "soft")
        if not self._hard_terms and not self._soft_terms:
            raise ValueError("NodeLabelSchedulingStrategy needs at least one hard or soft label.")
        self.hard = hard
        self.soft = soft

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NodeLabelSchedulingStrategy)
            and self._hard_terms == other._hard_terms
            and self._soft_terms == other._soft_terms
        )

    def __hash__(self) -> int:
        return hash((self._hard_terms, self._soft_terms))


SchedulingStrategyT = (
    None
    | str
    | PlacementGroupSchedulingStrategy
    | NodeAffinitySchedulingStrategy
    | NodeLabelSchedulingStrategy
)


def parse_label_selector(selector: dict[str, str]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """Ray's ``label_selector`` syntax: ``"v"``, ``"!v"``, ``"in(a,b)"``, ``"!in(a,b)"``."""
    terms = []
    for key, raw in selector.items():
        text = raw.strip()
        negate = text.startswith("!")
        if negate:
            text = text[1:].strip()
        if text.startswith("in(") and text.endswith(")"):
            values = tuple(v.strip() for v in text[3:-1].split(",") if v.strip())
            if not values:
                raise ValueError(
                    f"Invalid label_selector {key!r}: {raw!r} lists no values. Fix: write "
                    "'in(a,b)'."
                )
        else:
            values = (text,)
        terms.append((key, "not_in" if negate else "in", values))
    return tuple(terms)


def to_scheduler_strategy(
    scheduling_strategy: SchedulingStrategyT = None,
    *,
    placement_group: Any = "default",
    placement_group_bundle_index: int = -1,
    current_placement_group_id: str | None = None,
    capture_child_tasks: bool = False,
    label_selector: dict[str, str] | None = None,
) -> Strategy:
    """The scheduler strategy for validated options.

    ``placement_group="default"`` with no strategy inherits the caller's placement group
    when that group captures child tasks (``current_placement_group_id`` +
    ``capture_child_tasks``, which the runtime knows), as in Ray. A ``label_selector``
    with the default strategy becomes a hard :class:`NodeLabel` strategy.
    """
    strategy = _to_strategy(
        scheduling_strategy,
        placement_group,
        placement_group_bundle_index,
        current_placement_group_id,
        capture_child_tasks,
    )
    if label_selector and isinstance(strategy, DefaultStrategy):
        return NodeLabel(parse_label_selector(label_selector))
    return strategy


def _to_strategy(
    s: SchedulingStrategyT,
    placement_group: Any,
    placement_group_bundle_index: int,
    current_placement_group_id: str | None,
    capture_child_tasks: bool,
) -> Strategy:
    if isinstance(s, PlacementGroupSchedulingStrategy):
        if s.placement_group is None:
            return DefaultStrategy()
        return BundleStrategy(s.placement_group.id.hex(), s.placement_group_bundle_index)
    if isinstance(s, NodeAffinitySchedulingStrategy):
        return NodeAffinity(s.node_id, s.soft, s._spill_on_unavailable, s._fail_on_unavailable)
    if isinstance(s, NodeLabelSchedulingStrategy):
        return NodeLabel(s._hard_terms, s._soft_terms)
    if s == "SPREAD":
        return SpreadStrategy()
    if s not in (None, "DEFAULT"):
        raise ValueError(
            f"Invalid scheduling_strategy={s!r}: expected None, \"DEFAULT\", \"SPREAD\" or a "
            "strategy object from carme.util.scheduling_strategies."
        )
    if placement_group not in (None, "default"):
        return BundleStrategy(placement_group.id.hex(), placement_group_bundle_index)
    if placement_group == "default" and s is None and current_placement_group_id and capture_child_tasks:
        return BundleStrategy(current_placement_group_id, -1)
    return DefaultStrategy()
