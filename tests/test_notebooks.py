"""Execute every notebook in notebooks/ and fail on any error.

Each notebook runs under the kernel its metadata names (``python3`` by
default; ``carme`` for notebooks that use the carme kernel), started from this
Python's environment. Jupyter and IPython write only under a temporary
directory, where the carme kernelspec is installed for the run (`jupyter_dirs`
in tests/conftest.py), and the leak guard there checks that no process or
shared-memory segment survives.

Notebooks whose name starts with ``ray-`` use Ray as the engine: they run
against the session's Ray head (``ray_cluster``, tests/ray_support.py), which
the kernel joins through ``CARME_ADDRESS=ray:HOST:PORT``, and are skipped where
Ray is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
FOUND = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 180
RAY_CELL_TIMEOUT_S = 420  # Tune and Train start several actors on a 2-CPU head

pytestmark = [pytest.mark.processes, pytest.mark.timeout(1200)]


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name) for p in FOUND] or [pytest.param(None, id="no-notebooks")],
)
def test_notebook_runs_without_error(
    path: Path | None,
    jupyter_dirs: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if path is None:
        pytest.fail(f"no notebooks found in {NOTEBOOKS}: expected at least quickstart.ipynb")
    timeout = CELL_TIMEOUT_S
    if path.name.startswith("ray-"):
        from ray_support import ray_available

        if not ray_available():
            pytest.skip("Ray is not installed: install the ray extra to run Ray notebooks")
        head = request.getfixturevalue("ray_cluster")
        monkeypatch.setenv("CARME_ADDRESS", f"ray:{head.gcs_address}")
        timeout = RAY_CELL_TIMEOUT_S
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
        timeout=timeout,
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
