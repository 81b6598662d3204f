"""A short ``KeyboardInterrupt`` for a cell whose remote work was cancelled.

Theory of operation
-------------------
An interrupt usually lands inside ``carme.get`` (``ray.get`` on the Ray engine, or
the ``%%remote`` magic), so IPython's traceback would walk through carme's (or
Ray's) and IPython's own frames: about
2 KB that say nothing to the user. The session installs :func:`handler` for
``KeyboardInterrupt`` (IPython's ``set_custom_exc``); it cancels the cell's work
first (``NotebookSession.cancel_cell``), then shows the traceback cut to the
user's frames (:func:`user_frames`) with the message :func:`cancelled_text`,
which also becomes the error's ``evalue`` in the execute reply.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["cancelled_text", "handler", "internal_dirs", "user_frames"]


def internal_dirs() -> tuple[str, ...]:
    """Directories of the packages whose frames a user never needs to see."""
    out = []
    for name in ("carme", "carme_kernel", "IPython", "ipykernel", "ray"):
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            out.append(os.path.join(os.path.realpath(location), ""))
    return tuple(out)


def _internal(tb: TracebackType, dirs: tuple[str, ...]) -> bool:
    return os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(dirs)


def user_frames(tb: TracebackType | None, dirs: tuple[str, ...]) -> TracebackType | None:
    """The user's frames of ``tb``: the leading internal ones (IPython running the cell)
    skipped, cut at the first internal frame after them (carme's ``get``). A cell that
    only called into IPython (a cell magic such as ``%%remote``) has none to show."""
    while tb is not None and _internal(tb, dirs):
        tb = tb.tb_next
    kept: list[TracebackType] = []
    while tb is not None and not _internal(tb, dirs):
        kept.append(tb)
        tb = tb.tb_next
    if tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(
        tuple(d for d in dirs if "IPython" in d or "ipykernel" in d)
    ):
        return None  # the cell is a magic: its one line is the magic's call
    chain = None
    for entry in reversed(kept):
        chain = TracebackType(chain, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return chain


def cancelled_text(count: int, live: bool = True) -> str:
    """The interrupt's message: what was cancelled. ``live``: the engine's task state is
    current (carme); Ray's lags, so its cancel goes on as tasks show up there."""
    if count > 0:
        return f"cancelled {count} remote task{'' if count == 1 else 's'} of this cell"
    if live:
        return "no remote work of this cell was left to cancel"
    return "cancelling this cell's remote tasks as the engine's task state shows them"


def handler(cancel: Callable[[], tuple[int, bool] | None]) -> Callable[..., list[str]]:
    """IPython's custom handler for KeyboardInterrupt. ``cancel()`` cancels the cell's work
    and returns how many of its tasks and actor calls were cancelled and whether the
    engine's task state is live (None: no cluster joined; the message stays as it was)."""
    dirs = internal_dirs()

    def on_interrupt(shell: Any, etype: type[BaseException], evalue: BaseException,
                     tb: TracebackType | None, tb_offset: int | None = None) -> list[str]:
        done = cancel()
        if done is not None:
            evalue.args = (cancelled_text(*done),)
        frames = user_frames(tb, dirs)
        if frames is None:
            stb = [line.rstrip("\n") for line in shell.InteractiveTB.get_exception_only(etype, evalue)]
        else:
            stb = shell.InteractiveTB.structured_traceback(etype, evalue, frames, tb_offset=0)
        shell._showtraceback(etype, evalue, stb)
        return []

    return on_interrupt
