"""`_record.record`: the cheap stand-in for `@dataclass` keeps the behaviour carme relies on."""

from __future__ import annotations

import copy
import pickle

import pytest

from carme._record import field, record


@record(frozen=True)
class Point:
    x: int
    y: int = 0


@record(frozen=True)
class Empty:
    pass


@record
class Bag:
    name: str
    items: list = field(default_factory=list)
    size: int = 1


@record
class Sub(Bag):
    extra: str = "e"


def test_fields_defaults_and_factories() -> None:
    a, b = Bag("a"), Bag("b", size=3)
    assert (a.name, a.items, a.size) == ("a", [], 1)
    assert b.size == 3
    a.items.append(1)
    assert b.items == [] and Bag("c").items == []  # a fresh default per instance
    assert Sub("s").extra == "e" and Sub("s", [1], 2, "x").items == [1]
    assert repr(Bag("r")) == "Bag(name='r', items=[], size=1)"


def test_bad_calls_say_what_is_wrong() -> None:
    with pytest.raises(TypeError, match="missing the argument 'name'"):
        Bag()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 3 arguments"):
        Bag("a", [], 1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'name' twice"):
        Bag("a", name="b")  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected arguments"):
        Bag("a", colour=1)  # type: ignore[call-arg]


def test_equality_and_hashing() -> None:
    assert Point(1, 2) == Point(1, 2) and Point(1) != Point(1, 2)
    assert Point(1, 2) != (1, 2)
    assert {Point(1, 2): "a"}[Point(1, 2)] == "a"
    assert hash(Empty()) == hash(Empty()) and Empty() == Empty()
    assert Bag("a") == Bag("a") and Bag("a") != Sub("a")
    with pytest.raises(TypeError):
        hash(Bag("a"))  # mutable records are unhashable, as dataclasses with eq are


def test_frozen_refuses_assignment() -> None:
    p = Point(1, 2)
    with pytest.raises(AttributeError, match="frozen Point"):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen Point"):
        del p.y  # type: ignore[misc]
    assert p == Point(1, 2)


def test_pickle_and_copy_round_trip() -> None:
    for value in (Point(1, 2), Empty(), Bag("a", [1, 2]), Sub("s", extra="x")):
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value
    assert hash(pickle.loads(pickle.dumps(Point(3, 4)))) == hash(Point(3, 4))


def test_match_args() -> None:
    match Point(1, 2):
        case Point(x, y):
            assert (x, y) == (1, 2)
