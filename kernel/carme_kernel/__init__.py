"""carme in Jupyter: the ``carme`` kernel and the ``%%remote`` / ``%carme`` magics.

``%load_ext carme_kernel`` adds the magics to any IPython shell (terminal or
kernel); the ``carme`` kernelspec (``python -m carme_kernel``) loads them at
start. Nothing joins the cluster until first use.
"""

from __future__ import annotations

from typing import Any

from ._exec import RemoteCellError

__all__ = ["RemoteCellError", "load_ipython_extension", "unload_ipython_extension"]

_SESSION_ATTR = "_carme_session"


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics and the cell hooks on ``ipython`` (idempotent)."""
    from ._session import NotebookSession
    from .magics import CarmeMagics

    if getattr(ipython, _SESSION_ATTR, None) is not None:
        return
    session = NotebookSession(ipython, getattr(ipython, "kernel", None))
    session.register()
    ipython.register_magics(CarmeMagics(ipython, session))
    setattr(ipython, _SESSION_ATTR, session)


def unload_ipython_extension(ipython: Any) -> None:
    """Leave the cluster and remove the cell hooks (the magics stay registered)."""
    session = getattr(ipython, _SESSION_ATTR, None)
    if session is None:
        return
    try:
        session.close()
    finally:
        session.unregister()
        setattr(ipython, _SESSION_ATTR, None)
