"""Resource accounting in fixed point, with GPU instances.

Amounts are floats at the API and integers inside, in units of 1/10000 (``UNIT``),
so adding and removing fractions never drifts (Ray does the same). ``memory`` and
``object_store_memory`` are bytes, stored the same way (Python ints do not overflow).

A :class:`ResourcePool` is what a node offers, and also what a placement-group bundle
reserved on a node. GPUs in a pool are instances with ids ("0", "1", ...), each with
a capacity (normally one whole GPU) and a free amount:

- a request of ``0 < g < 1`` GPU takes ``g`` from one instance: the most used one that
  still has room, so fractional work packs onto as few GPUs as possible;
- a request of ``g >= 1`` GPU must be whole and takes ``g`` entirely free instances.

An :class:`Allocation` remembers which instances gave how much, so freeing is exact,
and its ``gpu_ids`` go to ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import math
import numbers

from ._record import field, record

__all__ = [
    "UNIT",
    "Allocation",
    "ResourcePool",
    "describe",
    "from_fixed",
    "to_fixed",
    "to_fixed_shape",
    "validate_bundles",
]

UNIT = 10_000
GPU = "GPU"


def to_fixed(amount: float) -> int:
    """A float amount as an integer count of 1/10000 units."""
    return int(round(amount * UNIT))


def from_fixed(units: int) -> float:
    return units / UNIT


def to_fixed_shape(shape: dict[str, float]) -> dict[str, int]:
    """Convert a float shape, dropping zero amounts."""
    out: dict[str, int] = {}
    for key, amount in shape.items():
        units = to_fixed(amount)
        if units < 0:
            raise ValueError(f"resource {key!r} has a negative amount {amount}; expected 0 or more")
        if units:
            out[key] = units
    return out


def to_float_shape(shape: dict[str, int]) -> dict[str, float]:
    return {k: from_fixed(v) for k, v in shape.items()}


def describe(shape: dict[str, float]) -> str:
    """``{CPU: 2, GPU: 0.5}`` in a compact, sorted, human form."""
    parts = []
    for key in sorted(shape):
        v = shape[key]
        parts.append(f"{key}: {int(v) if float(v).is_integer() else v}")
    return "{" + ", ".join(parts) + "}"


def validate_bundles(bundles: object) -> list[dict[str, float]]:
    """Check placement-group bundles: a non-empty list of non-empty resource dicts."""
    fix = 'pass e.g. bundles=[{"CPU": 1}, {"CPU": 1, "GPU": 1}]'
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError(
            f"Invalid bundles={bundles!r}: expected a non-empty list of resource dicts. Fix: {fix}."
        )
    out: list[dict[str, float]] = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict):
            raise TypeError(
                f"Invalid bundle {i}={bundle!r}: expected a dict of resource names to amounts. "
                f"Fix: {fix}."
            )
        clean: dict[str, float] = {}
        for key, amount in bundle.items():
            if not isinstance(key, str):
                raise TypeError(f"Invalid bundle {i}: resource name {key!r} is not a string.")
            if not isinstance(amount, numbers.Real) or isinstance(amount, bool):
                raise TypeError(
                    f"Invalid bundle {i}: {key}={amount!r}, expected a number. Fix: {fix}."
                )
            value = float(amount)
            if value < 0 or math.isnan(value) or math.isinf(value):
                raise ValueError(
                    f"Invalid bundle {i}: {key}={amount!r}, expected a non-negative number."
                )
            if key == GPU and value > 1 and not value.is_integer():
                raise ValueError(
                    f"Invalid bundle {i}: GPU={amount!r}; GPU amounts above 1 must be whole "
                    "numbers (a fraction below 1 shares one GPU)."
                )
            clean[key] = value
        if not any(v > 0 for v in clean.values()):
            raise ValueError(
                f"Invalid bundle {i}={bundle!r}: bundles cannot be empty or have only zero "
                f"resources. Fix: {fix}."
            )
        out.append(clean)
    return out


@record
class Allocation:
    """What one grant took from a pool: fixed-point amounts plus GPU instance shares."""

    shape: dict[str, int]
    gpu_shares: list[tuple[int, int]] = field(default_factory=list)  # (instance index, units)

    def gpu_ids(self, pool: ResourcePool) -> tuple[str, ...]:
        return tuple(pool.gpu_ids[i] for i, _ in self.gpu_shares)


class ResourcePool:
    """Totals and availability of one node, or of one placement-group bundle."""

    __slots__ = ("avail", "gpu_cap", "gpu_free", "gpu_ids", "total")

    def __init__(
        self,
        total: dict[str, int],
        gpu_instances: list[tuple[str, int]] | None = None,
    ) -> None:
        self.total = dict(total)
        self.avail = dict(total)
        if gpu_instances is None:
            gpu_instances = []
            left = total.get(GPU, 0)
            index = 0
            while left > 0:
                gpu_instances.append((str(index), min(UNIT, left)))
                left -= UNIT
                index += 1
        self.gpu_ids = [gid for gid, _ in gpu_instances]
        self.gpu_cap = [cap for _, cap in gpu_instances]
        self.gpu_free = list(self.gpu_cap)

    @classmethod
    def from_floats(cls, total: dict[str, float]) -> ResourcePool:
        return cls(to_fixed_shape(total))

    def clone(self) -> ResourcePool:
        twin = ResourcePool.__new__(ResourcePool)
        twin.total = self.total
        twin.avail = dict(self.avail)
        twin.gpu_ids = self.gpu_ids
        twin.gpu_cap = self.gpu_cap
        twin.gpu_free = list(self.gpu_free)
        return twin

    def fresh(self) -> ResourcePool:
        """A copy with everything available (to test whether a shape could *ever* fit)."""
        twin = self.clone()
        twin.avail = dict(self.total)
        twin.gpu_free = list(self.gpu_cap)
        return twin

    # -- fitting -------------------------------------------------------------------
    def _gpu_plan(self, units: int) -> list[tuple[int, int]] | None:
        if units <= 0:
            return []
        if units < UNIT:
            best = -1
            for i, free in enumerate(self.gpu_free):
                if free >= units and (best < 0 or free < self.gpu_free[best]):
                    best = i
            return None if best < 0 else [(best, units)]
        if units % UNIT:
            return None
        need = units // UNIT
        whole = [i for i, free in enumerate(self.gpu_free) if free == UNIT == self.gpu_cap[i]]
        if len(whole) < need:
            return None
        return [(i, UNIT) for i in whole[:need]]

    def fits(self, shape: dict[str, int]) -> bool:
        avail = self.avail
        for key, units in shape.items():
            if avail.get(key, 0) < units:
                return False
        return GPU not in shape or self._gpu_plan(shape[GPU]) is not None

    def fits_total(self, shape: dict[str, int]) -> bool:
        return self.fresh().fits(shape) if shape else True

    def allocate(self, shape: dict[str, int]) -> Allocation | None:
        """Take ``shape`` from this pool, or return None (and change nothing)."""
        avail = self.avail
        for key, units in shape.items():
            if avail.get(key, 0) < units:
                return None
        plan: list[tuple[int, int]] = []
        if GPU in shape:
            got = self._gpu_plan(shape[GPU])
            if got is None:
                return None
            plan = got
        for key, units in shape.items():
            avail[key] -= units
        for i, units in plan:
            self.gpu_free[i] -= units
        return Allocation(dict(shape), plan)

    def free(self, alloc: Allocation) -> None:
        for key, units in alloc.shape.items():
            self.avail[key] = self.avail.get(key, 0) + units
        for i, units in alloc.gpu_shares:
            self.gpu_free[i] += units

    # -- views ---------------------------------------------------------------------
    def total_floats(self) -> dict[str, float]:
        return to_float_shape(self.total)

    def avail_floats(self) -> dict[str, float]:
        return to_float_shape(self.avail)

    def utilization_after(self, shape: dict[str, int]) -> float:
        """Highest fraction used of any resource if ``shape`` were added (for DEFAULT)."""
        worst = 0.0
        for key, total in self.total.items():
            if total > 0:
                used = total - self.avail.get(key, 0) + shape.get(key, 0)
                worst = max(worst, used / total)
        return worst

    def shortfall(self, shape: dict[str, int]) -> list[str]:
        """Resource names of ``shape`` that exceed this pool's totals."""
        missing = [k for k, v in shape.items() if self.total.get(k, 0) < v]
        if not missing and GPU in shape and not self.fits_total({GPU: shape[GPU]}):
            missing.append(GPU)
        return missing
