"""Installing carme from a source checkout, with and without Node.js (issue 14).

`hatch_build.py` decides per wheel whether the JupyterLab side panel goes in: a
complete build goes in as it is, an incomplete one is rebuilt with npm, and
without npm carme installs without the panel. The pure part (what a build lacks)
is tested on small trees; then, for real, in a copy of the checkout (its git files
only, as a fresh clone has them) and with pip's build isolation:

- with a PATH that has no npm and only part of a build there: ``pip wheel --no-deps``
  makes a wheel of the three Python packages without the panel (nor its part), and ``pip install --no-deps`` of the checkout
  into a fresh venv succeeds;
- with only part of a build there (``static/style.js``) and npm on PATH: the wheel
  is built again and carries the whole static build and ``install.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hatch_build import LABEXT, SHARE, is_stale, missing_parts  # noqa: E402

sys.path.remove(str(ROOT))

PACKAGES = ("carme/__init__.py", "carme_kernel/__init__.py", "carme_lab/__init__.py")


def _build(root: Path, chunks: dict[str, str], present: set[str]) -> Path:
    """A labextension build in `root` whose remoteEntry loads `chunks`; only `present` exist."""
    (root / "static").mkdir(parents=True)
    entry = "static/remoteEntry.0123456789abcdef0123.js"
    files = {"package.json": json.dumps({"jupyterlab": {"_build": {"load": entry}}}),
             entry: "r.u=e=>e+\".\"+{" + ",".join(f'{c}:"{h}"' for c, h in chunks.items()) + "}[e]+\".js\"",
             "static/style.js": "import './index.css';"}
    files.update({f"static/{c}.{h}.js": "x" for c, h in chunks.items()})
    for name, text in files.items():
        if name in present or present == {"*"}:
            (root / name).write_text(text)
    return root


CHUNKS = {"43": "9db0b0a611022d4694f3", "799": "8bb839f454aaf9e01b03"}


def test_a_complete_build_lacks_nothing(tmp_path: Path) -> None:
    assert missing_parts(_build(tmp_path, CHUNKS, {"*"})) == []


def test_style_js_alone_is_not_a_build(tmp_path: Path) -> None:
    assert missing_parts(_build(tmp_path, CHUNKS, {"static/style.js"})) == [
        "package.json (with jupyterlab._build)"]


def test_a_missing_chunk_is_named(tmp_path: Path) -> None:
    present = {"package.json", "static/remoteEntry.0123456789abcdef0123.js", "static/style.js",
               "static/43.9db0b0a611022d4694f3.js"}
    assert missing_parts(_build(tmp_path, CHUNKS, present)) == ["static/799.8bb839f454aaf9e01b03.js"]


def test_a_build_older_than_its_sources_is_stale(tmp_path: Path) -> None:
    _build(tmp_path / LABEXT, CHUNKS, {"*"})
    src = tmp_path / "extension" / "src" / "panel.ts"
    src.parent.mkdir(parents=True)
    src.write_text("")
    built = (tmp_path / LABEXT / "package.json").stat().st_mtime
    os.utime(src, (built - 10, built - 10))
    assert not is_stale(tmp_path)
    os.utime(src, (built + 10, built + 10))
    assert is_stale(tmp_path)


# ---------------------------------------------------------------- real builds with pip


def _checkout(dest: Path) -> Path:
    """The files git has for this checkout (tracked, or new and not ignored), copied to `dest`."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _bin_without_npm(tmp: Path) -> Path:
    """A PATH directory with this Python and nothing else."""
    b = tmp / "bin"
    b.mkdir()
    (b / "python").symlink_to(sys.executable)
    return b


def _pip(*args: str, path: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """pip with build isolation (as users run it), `path` as PATH, its cache under `cwd`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_NO_BUILD_ISOLATION", "VIRTUAL_ENV"))}
    env.update(PATH=path, PIP_CACHE_DIR=str(cwd / "pip-cache"))
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def _wheel(dist: Path) -> zipfile.ZipFile:
    wheels = list(dist.glob("carme-*.whl"))
    assert len(wheels) == 1, wheels
    return zipfile.ZipFile(wheels[0])


@pytest.mark.timeout(600)
def test_without_npm_the_python_packages_install_without_the_panel(tmp_path: Path) -> None:
    src = _checkout(tmp_path / "src")
    assert not (src / LABEXT).exists()
    (src / LABEXT / "static").mkdir(parents=True)  # what a build cut short leaves
    (src / LABEXT / "static" / "style.js").write_text("/* left by a build cut short */\n")
    path = str(_bin_without_npm(tmp_path))
    out = _pip("wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"), str(src), path=path, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "npm not found" in out.stdout + out.stderr
    names = _wheel(tmp_path / "dist").namelist()
    for pkg in PACKAGES:
        assert pkg in names, pkg
    assert not [n for n in names if "labextension" in n], "a panel that was never (wholly) built"
    assert any(n.endswith("jupyter_server_config.d/carme_lab.json") for n in names)

    # and `pip install .` of the checkout, as the issue tried, into a fresh venv
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    out = _pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", str(src),
               path=path, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print('\\n'.join(str(f) for f in m.files('carme')))"],
                          capture_output=True, text=True, check=True).stdout.split()
    for pkg in PACKAGES:
        assert pkg in site, pkg


@pytest.mark.timeout(900)
def test_with_npm_a_partial_build_is_rebuilt_and_the_wheel_carries_all_of_it(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the panel cannot be built here")
    src = _checkout(tmp_path / "src")
    partial = src / LABEXT / "static"
    partial.mkdir(parents=True)
    (partial / "style.js").write_text("/* left by a build cut short */\n")
    modules = ROOT / "extension" / "node_modules"
    if modules.is_dir():  # saves `npm ci` (~20 s and the registry); the build is the same
        (src / "extension" / "node_modules").symlink_to(modules, target_is_directory=True)
    path = os.pathsep.join([str(_bin_without_npm(tmp_path)), str(Path(npm).parent)])
    out = _pip("wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src), path=path, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    whl = _wheel(tmp_path / "dist")
    prefix = f"carme-0.1.0.data/data/{SHARE}/"
    unpacked = tmp_path / "unpacked"
    for name in whl.namelist():
        if name.startswith(prefix):
            whl.extract(name, unpacked)
    panel = unpacked / prefix
    assert (panel / "static" / "style.js").read_text() != "/* left by a build cut short */\n"
    assert missing_parts(panel) == [], "the wheel's panel lacks files its remoteEntry loads"
    assert len(list((panel / "static").glob("*.js"))) >= 3  # remoteEntry, style, chunks
    load = json.loads((panel / "package.json").read_text())["jupyterlab"]["_build"]["load"]
    assert f"carme_lab/labextension/{load}" in whl.namelist()  # `_jupyter_labextension_paths`
    install = json.loads((panel / "install.json").read_text())
    assert install["packageName"] == "carme" and install["packageManager"] == "python"
