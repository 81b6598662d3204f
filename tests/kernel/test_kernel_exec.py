"""The remote body of %%remote, run in this process (no cluster)."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from carme_kernel._cell import prepare
from carme_kernel._exec import Namespace, RemoteCellError, run_cell, run_task


def test_value_pull_and_fresh_namespace() -> None:
    code = prepare("y = x * 2\nz = 5\ny + z\n", "<remote cell In[1]>", header="%%remote\n")
    result = run_task(code, {"x": 10}, ["y", "missing"])
    assert result.value == 25
    assert result.pulled == {"y": 20}
    assert result.missing == ["missing"]
    assert run_task(code, {"x": 1}, [], unwrap=True) == 7


def test_code_survives_pickling() -> None:
    code = prepare("print('hi')\n1 + 1", "<c>", header="%%remote\n")
    again = pickle.loads(cloudpickle.dumps(code))
    assert run_task(again, {}, [], unwrap=True) == 2


def test_output_newlines_counted(capsys: pytest.CaptureFixture[str]) -> None:
    code = prepare("print('a')\nprint('b\\nc')", "<c>")
    assert run_task(code, {}, []).newlines == 3
    assert capsys.readouterr().out == "a\nb\nc\n"


def test_error_has_cell_line_numbers_and_source() -> None:
    code = prepare(
        "a = 1\n\ndef f():\n    raise ValueError('boom')\nf()\n",
        "<remote cell In[7]>",
        header="%%remote --cpus 1\n",
    )
    with pytest.raises(RemoteCellError) as info:
        run_task(code, {}, [])
    err = info.value
    text = err.traceback_text
    assert 'File "<remote cell In[7]>", line 6' in text
    assert 'File "<remote cell In[7]>", line 5, in f' in text
    assert "raise ValueError('boom')" in text
    assert "_exec.py" not in text  # machinery frames are cut
    assert str(err) == "ValueError: boom"
    assert isinstance(err.cause, ValueError)
    assert err._render_traceback_()[-1] == "ValueError: boom"
    back = pickle.loads(cloudpickle.dumps(err))
    assert back.traceback_text == text and back.type_name == "ValueError"


def test_namespace_keeps_variables() -> None:
    ns = Namespace()
    ns.run(prepare("w = 3", "<c>"), {}, [])
    assert ns.run(prepare("w * 2", "<c>"), {}, [], unwrap=True) == 6
    assert ns.names() == {"w": "int"}


def test_run_cell_restores_streams() -> None:
    import sys

    out = sys.stdout
    with pytest.raises(RemoteCellError):
        run_cell(prepare("1/0", "<c>"), {}, {}, [])
    assert sys.stdout is out
