"""`record`: `@dataclass` for carme's small value classes, made cheaply.

`dataclasses` writes and compiles source for every class it makes (an `__init__`, a
`__repr__`, an `__eq__`, a `__hash__`, and with `slots=True` the class again): about half
a millisecond each, paid at import by every driver (`import carme`) and every node daemon,
on the way to a cluster's first task. `record` gives the same class shape without
generating code: one `__init__` that takes the annotated fields (own and inherited, in
order; class-level values are defaults, `field(default_factory=...)` makes a fresh default
per instance), `__eq__` over them, a `__repr__`, and with `frozen=True` instances that
refuse assignment and hash by their fields, as a frozen dataclass does. Type checkers see
`dataclasses.dataclass` and `dataclasses.field` themselves, so constructor calls stay
checked.

The `__init__` is generic (a loop over the fields), so a record costs a few microseconds
more to build than a dataclass: use it for classes made per lease, per request or per
event, not per task or per object on a hot path (write a plain class with `__slots__`
there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field
else:
    class _Factory:
        __slots__ = ("make",)

        def __init__(self, make: Any) -> None:
            self.make = make

    def field(*, default_factory: Any) -> Any:
        """`field(default_factory=f)`: each instance gets its own `f()` as the default."""
        return _Factory(default_factory)

    class FrozenRecordError(AttributeError):
        """Assignment to a field of a frozen record (dataclasses' FrozenInstanceError)."""

    def record(cls: Any = None, /, *, frozen: bool = False, **_options: Any) -> Any:
        """`@record`, `@record(frozen=True)` (other dataclass options are accepted and ignored)."""
        if cls is None:
            return lambda c: _make(c, frozen)
        return _make(cls, frozen)

    def _make(cls: type, frozen: bool) -> type:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name, ann in klass.__dict__.get("__annotations__", {}).items():
                if "ClassVar" in str(ann) or name in names:
                    continue
                names.append(name)
        defaults: dict[str, Any] = {}
        factories: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):  # inherited defaults too, nearest class wins
            own = {**klass.__dict__.get("__record_defaults__", {}), **klass.__dict__}
            for n in names:
                if n in own:
                    value = own[n]
                    if isinstance(value, _Factory):
                        factories[n] = value.make
                        defaults.pop(n, None)
                    else:
                        defaults[n] = value
                        factories.pop(n, None)
        for n in names:  # a default lives on the instance, not as a class attribute
            if n in cls.__dict__:
                delattr(cls, n)
        # kept for subclasses (their own class dict no longer has them)
        cls.__record_defaults__ = {**defaults, **{n: _Factory(f) for n, f in factories.items()}}  # type: ignore[attr-defined]
        fields = tuple(names)
        count = len(fields)
        qualname = cls.__qualname__
        put = object.__setattr__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if len(args) > count:
                raise TypeError(f"{qualname}() takes {count} arguments, got {len(args)}")
            for i, name in enumerate(fields):
                if i < len(args):
                    value = args[i]
                    if name in kwargs:
                        raise TypeError(f"{qualname}() got {name!r} twice")
                elif name in kwargs:
                    value = kwargs.pop(name)
                elif name in defaults:
                    value = defaults[name]
                elif name in factories:
                    value = factories[name]()
                else:
                    raise TypeError(f"{qualname}() is missing the argument {name!r}")
                put(self, name, value)
            if kwargs:
                raise TypeError(f"{qualname}() got unexpected arguments {sorted(kwargs)}")

        def __eq__(self: Any, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return all(getattr(self, n) == getattr(other, n) for n in fields)

        def __repr__(self: Any) -> str:
            inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields)
            return f"{qualname}({inner})"

        cls.__init__ = __init__  # type: ignore[misc]
        cls.__eq__ = __eq__  # type: ignore[method-assign,assignment]
        cls.__repr__ = __repr__  # type: ignore[method-assign,assignment]
        if frozen:
            def __setattr__(self: Any, name: str, value: Any) -> None:
                raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {qualname}")

            def __delattr__(self: Any, name: str) -> None:
                raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {qualname}")

            def __hash__(self: Any) -> int:
                return hash(tuple(getattr(self, n) for n in fields))

            cls.__setattr__ = __setattr__  # type: ignore[method-assign,assignment]
            cls.__delattr__ = __delattr__  # type: ignore[method-assign,assignment]
            cls.__hash__ = __hash__  # type: ignore[method-assign,assignment]
        else:
            cls.__hash__ = None  # type: ignore[assignment]  # as a dataclass with eq: unhashable
        cls.__match_args__ = fields  # type: ignore[attr-defined]
        cls.__record_fields__ = fields  # type: ignore[attr-defined]
        return cls

__all__ = ["field", "record"]
