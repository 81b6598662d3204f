"""carme.util: scheduling strategies, placement groups, state API (against a fake runtime)."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import pytest

import carme._context
import carme.util
from carme._scheduler import (
    BundleStrategy,
    DefaultStrategy,
    NodeAffinity,
    NodeLabel,
    SpreadStrategy,
)
from carme.util import state
from carme.util.placement_group import (
    PlacementGroup,
    PlacementGroupID,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from carme.util.scheduling_strategies import (
    DoesNotExist,
    Exists,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NotIn,
    PlacementGroupSchedulingStrategy,
    parse_label_selector,
    to_scheduler_strategy,
)


class FakeRuntime:
    def __init__(self) -> None:
        self.pgs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.current_pg: str | None = None

    def create_placement_group(self, bundles: list, strategy: str, name: str, lifetime: Any) -> str:
        pg_id = f"{len(self.pgs) + 1:032x}"
        self.pgs[pg_id] = {
            "placement_group_id": pg_id, "name": name, "state": "CREATED", "strategy": strategy,
            "bundles": dict(enumerate(bundles)), "bundles_to_node_id": {}, "message": "",
        }
        self.calls.append(("create", bundles, strategy, name, lifetime))
        return pg_id

    def remove_placement_group(self, pg_id: str) -> None:
        self.pgs[pg_id]["state"] = "REMOVED"

    def placement_group_info(self, pg_id: str | None = None, name: str | None = None) -> Any:
        if pg_id is not None:
            return self.pgs[pg_id]
        if name is not None:
            return next((p for p in self.pgs.values() if p["name"] == name), None)
        return list(self.pgs.values())

    def placement_group_ready(self, pg_id: str) -> Any:
        return ("ref", pg_id)

    def wait_placement_group(self, pg_id: str, timeout: float | None) -> bool:
        self.calls.append(("wait", pg_id, timeout))
        return self.pgs[pg_id]["state"] == "CREATED"

    def current_placement_group_id(self) -> str | None:
        return self.current_pg

    def state_rows(self, kind: str) -> list[dict[str, Any]]:
        return self.rows.get(kind, [])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    rt = FakeRuntime()
    monkeypatch.setattr(carme._context, "runtime", lambda: rt)
    return rt


def test_util_exports() -> None:
    assert carme.util.__all__ == sorted(carme.util.__all__)
    for name in carme.util.__all__:
        assert hasattr(carme.util, name)


# -- scheduling strategies -----------------------------------------------------------


def test_strategy_construction_is_validated() -> None:
    with pytest.raises(TypeError, match="node_id"):
        NodeAffinitySchedulingStrategy(None, soft=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="soft"):
        NodeAffinitySchedulingStrategy("n1", soft="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PlacementGroup"):
        PlacementGroupSchedulingStrategy("pg")  # type: ignore[arg-type]
    pg = PlacementGroup(PlacementGroupID("aa"), [{"CPU": 1}])
    with pytest.raises(ValueError, match="out of range"):
        PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=1)
    with pytest.raises(ValueError, match="-1"):
        PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=-3)
    with pytest.raises(TypeError, match="In"):
        NodeLabelSchedulingStrategy({"zone": 3})
    with pytest.raises(ValueError):
        NodeLabelSchedulingStrategy({})
    with pytest.raises(ValueError):
        In()


@pytest.mark.parametrize("mod", [pickle, cloudpickle], ids=lambda m: m.__name__)
def test_strategies_pickle(mod: Any) -> None:
    pg = PlacementGroup(PlacementGroupID("aa"), [{"CPU": 1}, {"CPU": 2}])
    for s in (
        PlacementGroupSchedulingStrategy(pg, 1, True),
        NodeAffinitySchedulingStrategy("n1", soft=True, _spill_on_unavailable=True),
        NodeLabelSchedulingStrategy({"zone": In("a", "b")}, soft={"gpu": Exists()}),
    ):
        assert mod.loads(mod.dumps(s)) == s


def test_to_scheduler_strategy() -> None:
    pg = PlacementGroup(PlacementGroupID("ab12"), [{"CPU": 1}, {"CPU": 1}])
    assert to_scheduler_strategy(None) == DefaultStrategy()
    assert to_scheduler_strategy("DEFAULT") == DefaultStrategy()
    assert to_scheduler_strategy("SPREAD") == SpreadStrategy()
    assert to_scheduler_strategy(NodeAffinitySchedulingStrategy("n1", soft=True)) == NodeAffinity("n1", True)
    assert to_scheduler_strategy(PlacementGroupSchedulingStrategy(pg, 1)) == BundleStrategy("ab12", 1)
    assert to_scheduler_strategy(PlacementGroupSchedulingStrategy(None)) == DefaultStrategy()
    assert to_scheduler_strategy(None, placement_group=pg, placement_group_bundle_index=0) == BundleStrategy("ab12", 0)
    label = to_scheduler_strategy(
        NodeLabelSchedulingStrategy({"zone": "us", "x": NotIn("1")}, soft={"y": DoesNotExist()})
    )
    assert label == NodeLabel((("zone", "in", ("us",)), ("x", "not_in", ("1",))), (("y", "does_not_exist", ()),))
    # Child tasks of a capturing placement group inherit it; explicit None opts out.
    assert to_scheduler_strategy(None, current_placement_group_id="cc", capture_child_tasks=True) == BundleStrategy("cc", -1)
    assert to_scheduler_strategy(None, placement_group=None, current_placement_group_id="cc",
                                 capture_child_tasks=True) == DefaultStrategy()
    assert to_scheduler_strategy(None, current_placement_group_id="cc") == DefaultStrategy()
    with pytest.raises(ValueError, match="SPREAD"):
        to_scheduler_strategy("PACK")


def test_label_selector() -> None:
    assert parse_label_selector({"a": "x", "b": "!y", "c": "in(p, q)", "d": "!in(r)"}) == (
        ("a", "in", ("x",)), ("b", "not_in", ("y",)), ("c", "in", ("p", "q")), ("d", "not_in", ("r",))
    )
    assert to_scheduler_strategy(None, label_selector={"zone": "us"}) == NodeLabel((("zone", "in", ("us",)),))
    assert to_scheduler_strategy("SPREAD", label_selector={"zone": "us"}) == SpreadStrategy()
    with pytest.raises(ValueError, match="no values"):
        parse_label_selector({"a": "in()"})


# -- placement groups ----------------------------------------------------------------


def test_placement_group_validates_before_calling_the_runtime(fake: FakeRuntime) -> None:
    with pytest.raises(ValueError, match="only zero"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="pack")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    with pytest.raises(TypeError, match="name"):
        placement_group([{"CPU": 1}], name=3)  # type: ignore[arg-type]
    assert fake.calls == []


def test_placement_group_lifecycle(fake: FakeRuntime) -> None:
    pg = placement_group([{"CPU": 1}, {"GPU": 1}], strategy="SPREAD", name="train", lifetime="detached")
    assert fake.calls[0] == ("create", [{"CPU": 1.0}, {"GPU": 1.0}], "SPREAD", "train", "detached")
    assert pg.bundle_count == 2 and pg.bundle_specs == [{"CPU": 1.0}, {"GPU": 1.0}]
    assert pg.ready() == ("ref", pg.id.hex())
    assert pg.wait(5) is True and fake.calls[-1] == ("wait", pg.id.hex(), 5)
    for mod in (pickle, cloudpickle):
        back = mod.loads(mod.dumps(pg))
        assert back == pg and hash(back) == hash(pg) and back.bundle_specs == pg.bundle_specs
    assert get_placement_group("train") == pg
    assert placement_group_table(pg)["strategy"] == "SPREAD"
    assert list(placement_group_table()) == [pg.id.hex()]
    fake.current_pg = pg.id.hex()
    current = get_current_placement_group()
    assert current == pg and current is not None and current.bundle_count == 2
    remove_placement_group(pg)
    assert fake.pgs[pg.id.hex()]["state"] == "REMOVED"
    with pytest.raises(ValueError, match="Failed to look up placement group with name: train"):
        get_placement_group("train")
    with pytest.raises(ValueError, match="Failed to look up"):
        get_placement_group("other")
    fake.current_pg = None
    assert get_current_placement_group() is None


def test_bundle_specs_fetched_lazily(fake: FakeRuntime) -> None:
    pg_id = fake.create_placement_group([{"CPU": 2}], "PACK", "", None)
    assert PlacementGroup(PlacementGroupID(pg_id)).bundle_specs == [{"CPU": 2}]


def test_without_runtime_raises_clearly() -> None:
    pg = PlacementGroup(PlacementGroupID("aa"), [{"CPU": 1}])
    with pytest.raises(RuntimeError, match="init"):
        pg.wait(1)


# -- state API -------------------------------------------------------------------------

TASKS = [
    {"task_id": "t1", "attempt_number": 0, "name": "f", "state": "FINISHED", "type": "NORMAL_TASK",
     "func_or_class_name": "f", "node_id": "n1", "events": []},
    {"task_id": "t2", "attempt_number": 0, "name": "g", "state": "FAILED", "type": "NORMAL_TASK",
     "func_or_class_name": "g", "node_id": "n2", "events": []},
    {"task_id": "t2", "attempt_number": 1, "name": "g", "state": "RUNNING", "type": "NORMAL_TASK",
     "func_or_class_name": "g", "node_id": "n1", "events": []},
]


def test_apply_filters() -> None:
    rows = TASKS
    assert [r["task_id"] for r in state.apply_filters(rows, [("state", "=", "finished")], "tasks")] == ["t1"]
    assert len(state.apply_filters(rows, [("state", "!=", "FINISHED")], "tasks")) == 2
    pending = [{"task_id": "p", "state": "SUBMITTED"}]
    assert state.apply_filters(pending, [("state", "=", "PENDING_NODE_ASSIGNMENT")], "tasks") == pending
    both = state.apply_filters(rows, [("node_id", "=", "n1"), ("name", "=", "g")], "tasks")
    assert [r["attempt_number"] for r in both] == [1]
    assert state.apply_filters(rows, [("node_id", "=", "N1")], "tasks") == []  # ids are case-sensitive
    assert len(state.apply_filters(rows, [("attempt_number", "=", "0")], "tasks")) == 2
    assert len(state.apply_filters([{"is_alive": True}], [("is_alive", "=", "True")], "workers")) == 1
    with pytest.raises(ValueError, match=r"Invalid filter key 'colour' for tasks: valid keys are .*task_id"):
        state.apply_filters(rows, [("colour", "=", "red")], "tasks")
    with pytest.raises(ValueError, match="predicate"):
        state.apply_filters(rows, [("state", "~", "x")], "tasks")
    with pytest.raises(ValueError, match="tuple"):
        state.apply_filters(rows, [("state", "=")], "tasks")  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown state kind"):
        state.apply_filters(rows, None, "gpus")


def test_select_rows_limit_and_detail() -> None:
    brief = state.select_rows(TASKS, "tasks", limit=2)
    assert len(brief) == 2 and "events" not in brief[0] and brief[0].state == "FINISHED"
    full = state.select_rows(TASKS, "tasks", detail=True)
    assert "events" in full[0]
    with pytest.raises(AttributeError, match="no field"):
        _ = brief[0].colour
    with pytest.raises(ValueError, match="limit"):
        state.select_rows(TASKS, "tasks", limit=0)
    assert pickle.loads(pickle.dumps(brief[0])) == brief[0]


def test_state_wrappers(fake: FakeRuntime) -> None:
    fake.rows = {
        "tasks": TASKS,
        "actors": [{"actor_id": "a1", "class_name": "C", "state": "ALIVE"},
                   {"actor_id": "a2", "class_name": "C", "state": "DEAD"}],
        "objects": [{"object_id": "o1", "object_size": 2**20, "call_site": "x.py:1",
                     "task_status": "FINISHED", "reference_type": "LOCAL_REFERENCE"}],
        "nodes": [{"node_id": "n1", "state": "ALIVE"}],
    }
    assert [t.task_id for t in state.list_tasks(filters=[("state", "=", "RUNNING")])] == ["t2"]
    task = state.get_task("t2")
    assert task is not None and task["attempt_number"] == 1
    assert state.get_task("nope") is None
    actor = state.get_actor("a2")
    assert actor is not None and actor.state == "DEAD"
    node = state.get_node("n1")
    assert node is not None and node.state == "ALIVE"
    assert state.list_nodes(limit=1)[0]["node_id"] == "n1"
    assert state.list_workers() == [] and state.list_jobs() == []
    assert state.list_placement_groups() == []
    assert state.get_objects("o1")[0]["object_size"] == 2**20
    assert state.summarize_tasks()["cluster"]["summary"]["g"]["state_counts"] == {"FAILED": 1, "RUNNING": 1}
    assert state.summarize_actors()["cluster"]["summary"]["C"]["state_counts"] == {"ALIVE": 1, "DEAD": 1}
    objs = state.summarize_objects()["cluster"]
    assert objs["total_objects"] == 1 and objs["summary"]["x.py:1"]["total_size_mb"] == 1.0
