"""`record`: `@dataclass` for the node's small event and effect classes, made cheaply.

`dataclasses` writes and compiles source for every class it makes (an `__init__`, a
`__repr__`, an `__eq__`, and with `slots=True` the class again): about half a millisecond
each, paid at import by every node daemon, on the way to a cluster's first task. `record`
gives the same class shape without generating code: one `__init__` that takes the
annotated fields (own and inherited, in order; class-level values are defaults),
`__eq__` over them, a `__repr__`, `__slots__`-free instances. Type checkers see
`dataclasses.dataclass` itself, so constructor calls stay checked.

Only what these classes use is supported: positional or keyword fields with immutable
defaults (no `field(...)`, no `frozen`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataclasses import dataclass as record
else:
    _MISSING = object()

    def record(cls: Any = None, /, **_options: Any) -> Any:
        """`@record` or `@record(slots=True)` (options are accepted and ignored)."""
        if cls is None:
            return _make
        return _make(cls)

    def _make(cls: type) -> type:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name, ann in klass.__dict__.get("__annotations__", {}).items():
                if "ClassVar" in str(ann) or name in names:
                    continue
                names.append(name)
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        for n in defaults:  # a default lives on the instance, not as a class attribute
            delattr(cls, n)
        fields = tuple(names)
        count = len(fields)
        qualname = cls.__qualname__

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
                else:
                    raise TypeError(f"{qualname}() is missing the argument {name!r}")
                object.__setattr__(self, name, value)
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
        cls.__hash__ = None  # type: ignore[assignment]  # as a dataclass with eq: unhashable
        cls.__match_args__ = fields  # type: ignore[attr-defined]
        cls.__record_fields__ = fields  # type: ignore[attr-defined]
        return cls

__all__ = ["record"]
