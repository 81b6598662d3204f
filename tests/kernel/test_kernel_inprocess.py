"""%load_ext carme_kernel in an in-process IPython shell (a terminal IPython, no kernel)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import carme_kernel
from carme_kernel.magics import NamespaceLostError

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    carme_kernel.load_ipython_extension(shell)
    try:
        yield shell
    finally:
        carme_kernel.unload_ipython_extension(shell)  # leaves the cluster


def test_remote_cells_in_a_terminal_shell(ip: InteractiveShell) -> None:
    import carme

    assert not carme.is_initialized()  # joined on first use only
    ip.user_ns["data"] = [1, 2, 3]
    assert (
        ip.run_cell_magic(
            "remote", "--pull doubled", "doubled = [2 * x for x in data]\nlen(doubled)"
        )
        == 3
    )
    assert ip.user_ns["doubled"] == [2, 4, 6]
    assert carme.is_initialized()
    with pytest.raises(carme_kernel.RemoteCellError) as info:
        ip.run_cell_magic("remote", "", "a = 1\nb = a / 0")
    assert "line 3" in info.value.traceback_text and isinstance(info.value.cause, ZeroDivisionError)
    with pytest.raises(UsageError, match="no node has"):
        ip.run_cell_magic("remote", "--resources '{\"unobtainium\": 1}'", "1")
    ip.run_cell_magic("remote", "--actor box", "kept = 'here'")
    assert ip.run_cell_magic("remote", "--actor box", "kept") == "here"
    with pytest.raises(NamespaceLostError, match="'box' died"):
        ip.run_cell_magic("remote", "--actor box", "import os\nos._exit(1)")
    assert ip.run_cell_magic("remote", "--actor box", "'kept' in globals()") is False  # a fresh one
    ip.run_line_magic("carme", "drop box")
    with pytest.raises(UsageError, match="no namespace named 'never_made'"):
        ip.run_line_magic("carme", "drop never_made")
