"""The carme kernelspec, installed into a temporary prefix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from carme_kernel._install import DISPLAY_NAME, main


def test_install_into_prefix(tmp_path: Path, capsys) -> None:
    assert main(["install", "--prefix", str(tmp_path)]) == 0
    spec = tmp_path / "share" / "jupyter" / "kernels" / "carme" / "kernel.json"
    data = json.loads(spec.read_text())
    assert data["display_name"] == DISPLAY_NAME == "Python 3 (carme)"
    assert data["argv"][:3] == [sys.executable, "-m", "carme_kernel"]
    assert data["interrupt_mode"] == "signal"
    assert "installed kernelspec 'carme'" in capsys.readouterr().out
