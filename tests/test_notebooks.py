"""Execute the notebooks the repository ships and fail on any error.

The shipped notebooks are listed here (`SHIPPED`), not globbed: a notebook a
user saves into ``notebooks/`` (JupyterLab's root for the README's run command)
is scratch work, not a test; `test_shipped_list_matches_the_repository` checks
the list against ``git ls-files``. Each runs under the carme kernel (the one
their metadata names, which a test checks), started from this Python's
environment, in an empty working directory that must stay empty: notebooks
write what they produce to temporary directories, never next to themselves. Jupyter and IPython write only under a temporary
directory, where the carme kernelspec is installed for the run (`jupyter_dirs`
in tests/conftest.py), and the leak guard there checks that no process or
shared-memory segment survives.

Notebooks whose name starts with ``ray-`` use Ray as the engine: they run
against the session's Ray head (``ray_cluster``, tests/ray_support.py), which
the kernel joins through ``CARME_ADDRESS=ray:HOST:PORT``, and are skipped where
Ray is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SHIPPED = ["quickstart.ipynb", "ray-libraries.ipynb", "remote-magics.ipynb", "widgets.ipynb"]
CELL_TIMEOUT_S = 180
RAY_CELL_TIMEOUT_S = 420  # Tune and Train start several actors on a 2-CPU head

pytestmark = [pytest.mark.processes, pytest.mark.timeout(1200)]


def _cells(name: str) -> list[dict]:
    with open(NOTEBOOKS / name) as f:
        return json.load(f)["cells"]


def test_shipped_list_matches_the_repository() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the shipped notebooks are what git tracks")
    out = subprocess.run(["git", "ls-files", "--", "notebooks/*.ipynb"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    tracked = sorted(Path(line).name for line in out.split())
    assert tracked == sorted(SHIPPED), (
        f"tests/test_notebooks.py SHIPPED lists {sorted(SHIPPED)}, git tracks {tracked}: "
        f"add a notebook you commit to SHIPPED (and remove one you delete)")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_notebook_names_the_carme_kernel(name: str) -> None:
    with open(NOTEBOOKS / name) as f:
        spec = json.load(f)["metadata"].get("kernelspec", {})
    assert spec.get("name") == "carme" and spec.get("display_name") == "Python 3 (carme)", (
        f"{name} names kernel {spec!r}: JupyterLab would open it on that kernel and ask the "
        f"user to pick 'Python 3 (carme)'")


LIVE_VIEW = re.compile(r"%carme (nodes|gpus|objects|timeline|actors)\b|View\(")
LEAVES = re.compile(r"%carme disconnect\b|\.shutdown\(\)")


@pytest.mark.parametrize("name", SHIPPED)
def test_no_cell_leaves_the_cluster_under_a_live_view(name: str) -> None:
    """Run All must leave the views a notebook shows live, not "not connected"."""
    shown = False
    for i, cell in enumerate(_cells(name)):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        assert not (shown and LEAVES.search(source)), (
            f"{name} cell {i} leaves the cluster ({source.strip()[:60]!r}) after a live view: "
            f"the views above it would show 'not connected' after Run All")
        shown = shown or bool(LIVE_VIEW.search(source))


@pytest.mark.parametrize("name", SHIPPED)
def test_notebook_runs_without_error(
    name: str,
    jupyter_dirs: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = NOTEBOOKS / name
    timeout = CELL_TIMEOUT_S
    if path.name.startswith("ray-"):
        from ray_support import ray_available

        if not ray_available():
            pytest.skip("Ray is not installed: install the ray extra to run Ray notebooks")
        head = request.getfixturevalue("ray_cluster")
        monkeypatch.setenv("CARME_ADDRESS", f"ray:{head.gcs_address}")
        timeout = RAY_CELL_TIMEOUT_S
    _execute(path, tmp_path, timeout)


def _execute(path: Path, tmp_path: Path, timeout: int) -> None:
    """Run the notebook at `path` under the kernel it names, in an empty working directory;
    fail on an error output or a file left in that directory."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        pytest.fail(f"{path.name} asks for kernel {kernel!r}, which is not installed")
    cwd = tmp_path / "cwd"  # the notebook's own directory, as JupyterLab runs it
    cwd.mkdir()
    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=timeout,
        resources={"metadata": {"path": str(cwd)}},
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
    left = sorted(p.name for p in cwd.iterdir())
    assert not left, f"{path.name} wrote {left} next to itself: write outputs to a temporary directory"


@pytest.fixture
def panel_selects_a_cluster(
    jupyter_dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A `carme start` cluster selected in the side panel: a selection file, whose path
    kernels carry (``CARME_SELECTION_FILE``), names it."""
    import carme.cluster
    from carme.notebook import SELECTION_ENV, write_selection

    monkeypatch.setenv("CARME_STATE_DIR", str(tmp_path / "state"))
    info = carme.cluster.start_head(num_cpus=2)
    try:
        path = tmp_path / "selection.json"
        write_selection(str(path), info["address"])
        monkeypatch.setenv(SELECTION_ENV, str(path))
        yield info["address"]
    finally:
        carme.cluster.stop(info["address"])


@pytest.mark.parametrize("name", [n for n in SHIPPED if not n.startswith("ray-")])
def test_notebook_runs_with_a_cluster_selected_in_the_panel(
    name: str, panel_selects_a_cluster: str, tmp_path: Path
) -> None:
    """The shipped notebooks run whichever way the panel is set: the quickstart asks for
    its own embedded cluster (``address="local"``), the others join the selected one."""
    import carme.cluster

    _execute(NOTEBOOKS / name, tmp_path, CELL_TIMEOUT_S)
    with carme.cluster.connect(panel_selects_a_cluster) as client:
        ran_there = bool(client.rows("tasks"))
    assert ran_there is (name != "quickstart.ipynb"), (name, ran_there)
