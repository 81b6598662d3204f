"""The carme kernel starts with the magics; %load_ext carme_kernel gives them to a plain kernel."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]


def test_kernel_info_and_magics(kernel) -> None:
    kernel.kc.kernel_info()
    info = kernel.kc.get_shell_msg(timeout=10)
    assert info["content"]["implementation"] == "carme"
    assert "remote" in kernel.value("sorted(get_ipython().magics_manager.magics['cell'])")
    run = kernel.run("%%remote --resources '{oops'\n1")
    assert run.status == "error"
    err = run.error()
    assert err is not None and err["ename"] == "UsageError"
    assert "--resources expects a JSON object" in err["evalue"]


def test_cluster_not_joined_at_start(kernel) -> None:
    assert kernel.value(
        "import sys; 'carme' in sys.modules and sys.modules['carme'].is_initialized()"
    ) in ("False",)


def test_load_ext_in_plain_ipython_kernel(python3_kernel) -> None:
    k = python3_kernel
    k.ok("%load_ext carme_kernel")
    run = k.ok("%%remote\nprint('from the cluster')\n6 * 7")
    assert run.result() == {"text/plain": "42"}
    assert run.text("stdout") == "from the cluster\n"  # routed to this cell, no prefix
    assert "embedded" in k.ok("%carme status").result()["text/plain"]
