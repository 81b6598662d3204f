"""Fixed-point resource pools and GPU instances."""

from __future__ import annotations

import pytest

from carme._resources import UNIT, ResourcePool, to_fixed, to_fixed_shape, validate_bundles


def pool(**total: float) -> ResourcePool:
    return ResourcePool.from_floats(total)


def test_fixed_point_has_no_drift() -> None:
    p = pool(CPU=1)
    allocs = [p.allocate(to_fixed_shape({"CPU": 0.1})) for _ in range(10)]
    assert all(a is not None for a in allocs)
    assert p.allocate(to_fixed_shape({"CPU": 0.1})) is None
    for a in allocs:
        assert a is not None
        p.free(a)
    assert p.avail == {"CPU": UNIT} and to_fixed(0.3) == 3000


def test_fractional_gpu_packs_onto_most_used_instance() -> None:
    p = pool(GPU=2)
    a = p.allocate({"GPU": to_fixed(0.5)})
    b = p.allocate({"GPU": to_fixed(0.25)})
    assert a and b and a.gpu_ids(p) == ("0",) and b.gpu_ids(p) == ("0",)
    c = p.allocate({"GPU": to_fixed(0.5)})  # 0.25 left on "0": goes to "1"
    d = p.allocate({"GPU": to_fixed(0.25)})  # exactly fills "0"
    assert c and d and c.gpu_ids(p) == ("1",) and d.gpu_ids(p) == ("0",)
    assert p.allocate({"GPU": UNIT}) is None  # no whole GPU free
    p.free(a)
    p.free(b)
    p.free(d)
    whole = p.allocate({"GPU": UNIT})
    assert whole and whole.gpu_ids(p) == ("0",)


def test_whole_gpus_take_free_instances() -> None:
    p = pool(GPU=4, CPU=8)
    a = p.allocate({"GPU": 2 * UNIT})
    b = p.allocate({"GPU": 2 * UNIT})
    assert a and b and a.gpu_ids(p) == ("0", "1") and b.gpu_ids(p) == ("2", "3")
    assert not p.fits({"GPU": UNIT})
    assert not p.fits_total({"GPU": 15000})  # 1.5 GPU is never valid
    assert p.fits_total({"GPU": 4 * UNIT}) and not p.fits_total({"GPU": 5 * UNIT})


def test_allocation_failure_changes_nothing() -> None:
    p = pool(CPU=2, GPU=1)
    assert p.allocate({"CPU": UNIT, "GPU": 2 * UNIT}) is None
    assert p.avail == {"CPU": 2 * UNIT, "GPU": UNIT} and p.gpu_free == [UNIT]


def test_shortfall_names_resources() -> None:
    p = pool(CPU=4)
    assert p.shortfall(to_fixed_shape({"CPU": 8, "TPU": 1})) == ["CPU", "TPU"]
    assert p.shortfall(to_fixed_shape({"CPU": 2})) == []


def test_validate_bundles() -> None:
    assert validate_bundles([{"CPU": 1}, {"GPU": 1, "x": 0}]) == [{"CPU": 1.0}, {"GPU": 1.0, "x": 0.0}]
    with pytest.raises(ValueError, match="only zero"):
        validate_bundles([{"CPU": 0}])
    with pytest.raises(ValueError, match="only zero"):
        validate_bundles([{}])
    with pytest.raises(ValueError, match="non-empty list"):
        validate_bundles([])
    with pytest.raises(TypeError, match="expected a dict"):
        validate_bundles(["CPU"])
    with pytest.raises(ValueError, match="non-negative"):
        validate_bundles([{"CPU": -1}])
    with pytest.raises(ValueError, match="whole numbers"):
        validate_bundles([{"GPU": 1.5}])
    with pytest.raises(TypeError, match="expected a number"):
        validate_bundles([{"CPU": "1"}])
