"""The remote side of ``%%remote``: run a prepared cell in a namespace.

Theory of operation
-------------------
The driver ships a :class:`~carme_kernel._cell.CellCode` (syntax trees, not
source to ``eval``: the tree was produced by ``ast.parse`` of the cell) and the
notebook values the cell reads. :func:`run_cell` compiles the trees, registers
the cell text with ``linecache`` so tracebacks show the cell's lines, executes
the body in the namespace, evaluates the last expression, and returns a
:class:`CellResult` with the value and the names the driver asked to pull.

A failure is raised as :class:`RemoteCellError`, whose traceback text starts
at the cell's own frame (the worker's machinery is cut off) and whose line
numbers are those the notebook shows. IPython renders it through
``_render_traceback_``.

:func:`run_task` is the task body (a fresh namespace per cell);
:class:`Namespace` is the actor class behind ``%%remote --actor NAME`` (one
namespace that lives across cells). This module is imported on workers: it
must not import IPython or anything of the kernel.
"""

from __future__ import annotations

import builtins
import linecache
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._cell import CellCode

__all__ = ["CellResult", "Namespace", "RemoteCellError", "run_cell", "run_task"]


class RemoteCellError(Exception):
    """A ``%%remote`` cell raised on the cluster.

    ``type_name`` and ``message`` describe the original exception,
    ``traceback_text`` is its traceback from the cell's first frame, ``cause``
    the original exception when it could be sent back (else None).
    """

    def __init__(
        self, type_name: str, message: str, traceback_text: str, cause: BaseException | None = None
    ) -> None:
        super().__init__(type_name, message, traceback_text, cause)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def _render_traceback_(self) -> list[str]:
        return self.traceback_text.rstrip("\n").splitlines()

    @classmethod
    def from_exception(cls, exc: BaseException, filename: str) -> RemoteCellError:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != filename:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
        cause: BaseException | None = exc
        try:
            import cloudpickle

            cloudpickle.loads(cloudpickle.dumps(exc))
        except Exception:
            cause = None
        return cls(type(exc).__qualname__, str(exc), text, cause)


@dataclass
class CellResult:
    value: Any = None
    pulled: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    newlines: int = 0  # newlines the cell wrote to stdout/stderr, for the driver's flush wait


class _CountingStream:
    """Forward writes to ``inner`` and count the newlines written."""

    def __init__(self, inner: TextIO, counter: list[int]) -> None:
        self._inner = inner
        self._counter = counter

    def write(self, text: str) -> int:
        self._counter[0] += text.count("\n")
        return self._inner.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def run_cell(
    code: CellCode, ns: dict[str, Any], pushed: dict[str, Any], pull: list[str]
) -> CellResult:
    """Execute ``code`` in ``ns`` after binding ``pushed``; return value and pulled names."""
    ns.update(pushed)
    ns.setdefault("__builtins__", builtins)
    lines = code.source.splitlines(keepends=True)
    linecache.cache[code.filename] = (len(code.source), None, lines, code.filename)
    counter = [0]
    out, err = sys.stdout, sys.stderr
    sys.stdout = _CountingStream(out, counter)  # type: ignore[assignment]
    sys.stderr = _CountingStream(err, counter)  # type: ignore[assignment]
    try:
        exec(compile(code.body, code.filename, "exec"), ns)
        value = None
        if code.last_expr is not None:
            value = eval(compile(code.last_expr, code.filename, "eval"), ns)
    except Exception as exc:
        raise RemoteCellError.from_exception(exc, code.filename) from None
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        sys.stdout, sys.stderr = out, err
    pulled = {name: ns[name] for name in pull if name in ns}
    missing = [name for name in pull if name not in ns]
    return CellResult(value=value, pulled=pulled, missing=missing, newlines=counter[0])


def run_task(code: CellCode, pushed: dict[str, Any], pull: list[str], unwrap: bool = False) -> Any:
    """Task body of ``%%remote``: a fresh ``__main__``-like namespace per cell.

    With ``unwrap`` the task returns the bare value (``--async``: the ObjectRef
    the notebook gets resolves to the cell's value).
    """
    ns: dict[str, Any] = {"__name__": "__main__"}
    result = run_cell(code, ns, pushed, pull)
    return result.value if unwrap else result


class Namespace:
    """Actor class of ``%%remote --actor NAME``: variables live across cells."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__name__": "__main__"}

    def run(
        self, code: CellCode, pushed: dict[str, Any], pull: list[str], unwrap: bool = False
    ) -> Any:
        result = run_cell(code, self.ns, pushed, pull)
        return result.value if unwrap else result

    def names(self) -> dict[str, str]:
        """Variable name → type name of what the namespace holds."""
        return {
            k: type(v).__name__
            for k, v in self.ns.items()
            if not k.startswith("__") and k != "__builtins__"
        }
