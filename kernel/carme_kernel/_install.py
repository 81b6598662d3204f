"""Install the ``carme`` kernelspec (display name "Python 3 (carme)").

``main(argv)`` backs ``carme kernel install [--user|--sys-prefix|--prefix DIR]``;
:func:`install` is the function behind it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["KERNEL_NAME", "DISPLAY_NAME", "install", "kernel_json", "main"]

KERNEL_NAME = "carme"
DISPLAY_NAME = "Python 3 (carme)"


def kernel_json(python: str | None = None) -> dict[str, object]:
    return {
        "argv": [python or sys.executable, "-m", "carme_kernel", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True},
    }


def install(user: bool = False, prefix: str | None = None, python: str | None = None) -> str:
    """Install the kernelspec; return the directory it was installed to.

    ``user`` installs for the current user, ``prefix`` under ``PREFIX/share/jupyter``
    (``sys.prefix`` for a virtual environment); with neither, system-wide.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / KERNEL_NAME
        src.mkdir()
        (src / "kernel.json").write_text(json.dumps(kernel_json(python), indent=1))
        _copy_logos(src)
        return str(
            KernelSpecManager().install_kernel_spec(
                str(src), KERNEL_NAME, user=user, prefix=prefix, replace=None
            )
        )


def _copy_logos(dest: Path) -> None:
    try:
        from ipykernel.kernelspec import RESOURCES
    except ImportError:
        return
    for logo in Path(RESOURCES).glob("logo-*"):
        shutil.copy(logo, dest / logo.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="carme kernel", description="Manage the carme Jupyter kernel."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser(
        "install", help=f"install the {KERNEL_NAME!r} kernelspec ({DISPLAY_NAME})"
    )
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument(
        "--sys-prefix", action="store_true", help="install into this Python's prefix (venv)"
    )
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
    args = parser.parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(user=args.user, prefix=prefix)
    print(f"installed kernelspec {KERNEL_NAME!r} ({DISPLAY_NAME}) in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
