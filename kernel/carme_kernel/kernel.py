"""The ``carme`` Jupyter kernel: IPython's kernel with carme's magics and cleanup.

It extends ``IPythonKernel`` only through documented hooks: the magics and cell
events are registered on the shell in ``__init__`` (exactly what
``%load_ext carme_kernel`` does), and ``do_shutdown`` leaves the cluster before
the kernel exits or restarts, so no task, actor or object of this kernel is
left behind. The cluster itself is joined lazily, on first use.
"""

from __future__ import annotations

from typing import Any

from ipykernel.ipkernel import IPythonKernel

from . import _SESSION_ATTR, load_ipython_extension

__all__ = ["CarmeKernel", "main"]


class CarmeKernel(IPythonKernel):
    implementation = "carme"
    implementation_version = "0.1.0"
    banner = "Python 3 (carme): %%remote runs a cell on the cluster; %carme shows it."

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        load_ipython_extension(self.shell)

    def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        session = getattr(self.shell, _SESSION_ATTR, None)
        if session is not None:
            try:
                session.close()
            except Exception as exc:  # the kernel must still shut down
                self.log.warning("carme: leaving the cluster failed: %s", exc)
        return super().do_shutdown(restart)


def main() -> None:
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=CarmeKernel)
