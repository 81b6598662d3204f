"""Execute every notebook in notebooks/ and fail on any error.

Each notebook runs under the kernel its metadata names (``python3`` by
default; ``carme`` for notebooks that use the carme kernel), started from this
Python's environment. Jupyter and IPython write only under a temporary
directory, where the carme kernelspec is installed for the run (`jupyter_dirs`
in tests/conftest.py), and the leak guard there checks that no process or
shared-memory segment survives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
FOUND = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 180

pytestmark = [pytest.mark.processes, pytest.mark.timeout(600)]


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name) for p in FOUND] or [pytest.param(None, id="no-notebooks")],
)
def test_notebook_runs_without_error(path: Path | None, jupyter_dirs: Path, tmp_path: Path) -> None:
    if path is None:
        pytest.fail(f"no notebooks found in {NOTEBOOKS}: expected at least quickstart.ipynb")
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        pytest.fail(f"{path.name} asks for kernel {kernel!r}, which is not installed")
    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, for debugging
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
