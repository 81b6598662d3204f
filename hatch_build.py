"""Build hook: the JupyterLab side panel goes into the wheel when it is built or can be built.

Theory of operation
-------------------
The panel is TypeScript, built by npm into ``extension/carme_lab/labextension``
(git-ignored). A wheel carries it as shared data under
``share/jupyter/labextensions/carme-lab`` with the ``install.json`` that tells
JupyterLab which Python package installed it. Before each wheel (standard or
editable) this hook looks at the build there:

- complete and not older than its sources: it goes into the wheel as it is;
- incomplete, missing or stale, and npm on PATH: ``scripts/build-labextension``
  builds it (a build that still lacks a part fails the install, naming the part);
- incomplete or missing, and no npm: the Python packages (``import carme``, the
  CLI, the kernel, the server extension) are installed without the panel, and
  the hook says so once; a stale but complete build is installed with a warning.

"Complete" means every file the build's ``package.json`` points JupyterLab at:
its ``remoteEntry``, ``static/style.js`` and every chunk the ``remoteEntry``
loads, so a build cut short (only ``style.js``, or chunks missing) is never
taken for a whole one. JupyterLab (for ``jupyter labextension build``) is a
build dependency only when npm will run, so installing without npm stays cheap.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LABEXT = "extension/carme_lab/labextension"
SHARE = "share/jupyter/labextensions/carme-lab"
INSTALL_JSON = "extension/install.json"
# the build is older than these: rebuild it (when npm is there)
SOURCES = ("extension/src", "extension/style", "extension/package.json", "extension/tsconfig.json")
BUILD_REQUIRES = ["jupyterlab>=4.2,<5"]
# in a remoteEntry: chunk id -> content hash, e.g. {43:"9db0b0a611022d4694f3",...}
_CHUNK = re.compile(r'"?([\w-]+)"?:"([0-9a-f]{20})"')


def missing_parts(labext: Path) -> list[str]:
    """The files a complete panel build has and the one in `labext` lacks ([] if whole)."""
    pkg = labext / "package.json"
    try:
        load = json.loads(pkg.read_text())["jupyterlab"]["_build"]["load"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["package.json (with jupyterlab._build)"]
    need = {load, "static/style.js"}
    entry = labext / load
    if entry.is_file():
        need |= {f"static/{c}.{h}.js" for c, h in _CHUNK.findall(entry.read_text(errors="replace"))}
    return sorted(p for p in need if not (labext / p).is_file())


def _newest(paths: list[Path]) -> float:
    times = [0.0]
    for p in paths:
        if p.is_dir():
            times += [f.stat().st_mtime for f in p.rglob("*") if f.is_file()]
        elif p.is_file():
            times.append(p.stat().st_mtime)
    return max(times)


def is_stale(root: Path) -> bool:
    """A source of the panel changed after its (complete) build was made."""
    return _newest([root / s for s in SOURCES]) > (root / LABEXT / "package.json").stat().st_mtime


class PanelBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def _plan(self) -> str:
        """'ship', 'build', 'ship-stale' or 'skip' for this checkout and PATH."""
        root = Path(self.root)
        missing = missing_parts(root / LABEXT)
        npm = shutil.which("npm") is not None
        if not missing:
            if not is_stale(root):
                return "ship"
            return "build" if npm else "ship-stale"
        return "build" if npm else "skip"

    def dependencies(self) -> list[str]:
        return list(BUILD_REQUIRES) if self.target_name == "wheel" and self._plan() == "build" else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        plan = self._plan()
        if plan == "skip":
            self.app.display_warning(
                f"carme: npm not found, so the JupyterLab side panel is not built ({LABEXT} lacks "
                f"{', '.join(missing_parts(root / LABEXT))}); installing carme without it. "
                f"`import carme`, the carme CLI, kernel and server extension work; for the panel "
                f"install Node.js >= 18 with npm and reinstall.")
            return
        if plan == "ship-stale":
            self.app.display_warning(
                f"carme: the built side panel in {LABEXT} is older than its sources and npm is "
                f"not found to rebuild it; installing the built one.")
        if plan == "build":
            self.app.display_info("carme: building the JupyterLab side panel with npm")
            subprocess.run(["bash", str(root / "scripts" / "build-labextension")], cwd=root, check=True)
            missing = missing_parts(root / LABEXT)
            if missing:
                raise RuntimeError(f"the side panel build in {LABEXT} finished without "
                                   f"{', '.join(missing)}; run scripts/build-labextension to see why")
        build_data["force_include"][LABEXT] = "carme_lab/labextension"
        build_data["shared_data"][LABEXT] = SHARE
        if not (root / LABEXT / "install.json").exists():
            # (JupyterLab's builder copies it into the build; then it comes with the folder,
            # and adding it again would put two files at one path in the wheel)
            build_data["shared_data"][INSTALL_JSON] = f"{SHARE}/install.json"
