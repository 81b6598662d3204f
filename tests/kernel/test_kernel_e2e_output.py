"""End to end through the carme kernel: remote output in the right cell, live; interrupts; cell tags."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]


def test_remote_output_streams_live(kernel) -> None:
    run = kernel.ok(
        "%%remote\nimport time\nfor i in range(4):\n"
        "    print('line', i, time.time(), flush=True)\n    time.sleep(1)\n",
    )
    lines = [(t, text) for t, chunk in run.streams("stdout") for text in chunk.splitlines()]
    lines = [(t, text) for t, text in lines if text.startswith("line")]
    assert [text.split()[1] for _, text in lines] == ["0", "1", "2", "3"]  # each once, in order
    for arrived, text in lines:
        printed = float(text.split()[2])
        assert arrived - printed < 1.5, f"{text!r} arrived {arrived - printed:.2f} s late"
    assert lines[-1][0] - lines[0][0] > 2.0  # not batched at the end


def test_output_goes_to_the_cell_that_launched_it(kernel) -> None:
    a = kernel.submit(
        "%%remote --async\nimport time\nfor i in range(3):\n"
        "    print('async', i, flush=True)\n    time.sleep(0.8)\n'done'"
    )
    kernel.wait(a)
    b = kernel.ok("import time\nprint('b start')\ntime.sleep(3)\nprint('b end')")
    kernel.collect(0.5)
    a_text = "".join(m["content"]["text"] for _, m in kernel.of(a) if m["msg_type"] == "stream")
    assert [ln for ln in a_text.splitlines() if ln.startswith("async")] == [
        "async 0",
        "async 1",
        "async 2",
    ]
    assert "async" not in b.text()
    assert kernel.value("import carme\ncarme.get(_remote)") == "'done'"
    # what a quick %%remote cell prints arrives before the cell ends
    for i in range(5):
        assert kernel.ok(f"%%remote\nprint('quick {i}')\n{i}").text() == f"quick {i}\n"
    # a plain task launched from a cell prints into that cell, once
    kernel.ok("@carme.remote\ndef shout(n):\n    print('shout', n)\n    return n")
    run = kernel.ok("carme.get(shout.remote(7))")
    assert run.text().count("shout 7") == 1


def _interrupt_ends_cell(kernel, code: str) -> None:
    """Run ``code``, interrupt the kernel once its work runs; the cell ends (the 10 s
    limit only guards against a hang: how fast is the benchmarks' business)."""
    msg_id = kernel.submit(code)
    time.sleep(2.5)
    kernel.km.interrupt_kernel()
    err = kernel.wait(msg_id, timeout=10).error()
    assert err is not None and err["ename"] == "KeyboardInterrupt", err


def test_interrupt_cancels_remote_work(kernel) -> None:
    kernel.ok("import carme\nfrom carme.util.state import list_tasks")
    for code in (
        "%%remote --name sleeper1\nimport time\ntime.sleep(60)",
        "@carme.remote\ndef sleeper2():\n    import time\n    time.sleep(60)\ncarme.get(sleeper2.remote())",
    ):
        _interrupt_ends_cell(kernel, code)
    deadline = time.monotonic() + 10
    while True:
        states = kernel.value(
            "sorted({t.get('state') for t in list_tasks() if t.get('name') in ('sleeper1', 'sleeper2')"
            " or 'sleeper2' in str(t.get('func_or_class_name'))})"
        )
        if "RUNNING" not in states and "PENDING" not in states:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


def test_tasks_record_their_cell(kernel) -> None:
    kernel.ok("import carme\nfrom carme.util.state import list_tasks")
    for code, name in (
        ("%%remote --name tagged\n1", "tagged"),
        ("%%remote --actor tagns --name tagged_call\n1", "tagged_call"),
        ("@carme.remote\ndef plain():\n    return 1\ncarme.get(plain.remote())", "plain"),
    ):
        count = kernel.ok(code).reply["content"]["execution_count"]
        cells = kernel.value(
            f"[t.get('cell') for t in list_tasks(detail=True) if t.get('name') == {name!r}]"
        )
        assert f"'execution_count': {count}" in cells, (name, cells)
        spans = kernel.value(
            f"[e['args'].get('cell') for e in carme.timeline() if e.get('name') == {name!r}]"
        )
        assert f"'execution_count': {count}" in spans, (name, spans)


def test_interrupt_cancels_actor_calls(kernel) -> None:
    kernel.ok(
        "import carme\n@carme.remote\nclass A:\n    def slow(self):\n        import time\n"
        "        time.sleep(60)\n    def fast(self):\n        return 1\na = A.remote()\n"
        "carme.get(a.fast.remote())"
    )
    kernel.ok("%%remote --actor ns\nx = 1")
    for code, after in (
        ("carme.get(a.slow.remote())", "carme.get(a.fast.remote(), timeout=10)"),
        (
            "%%remote --actor ns\nimport time\ntime.sleep(60)",
            "%%remote --actor ns --timeout 10\nx + 1",
        ),
    ):
        _interrupt_ends_cell(kernel, code)
        # the actor is free again: the interrupted call no longer runs
        assert kernel.value(after, timeout=30) in ("1", "2")


def _interrupt_once_started(kernel, code: str) -> dict:
    """Run ``code`` (whose remote work prints ``started``), interrupt once it printed, and
    return the cell's error."""
    msg_id = kernel.submit(code)
    deadline = time.monotonic() + 60
    while not any(
        m["msg_type"] == "stream" and "started" in m["content"]["text"] for _, m in kernel.of(msg_id)
    ):
        assert time.monotonic() < deadline, "the remote work never started"
        kernel.collect(0.2)
    kernel.km.interrupt_kernel()
    run = kernel.wait(msg_id, timeout=60)
    [err] = [dict(m["content"]) for _, m in run.messages if m["msg_type"] == "error"]
    assert err["ename"] == "KeyboardInterrupt" and "Custom TB" not in run.text(), (err, run.text())
    assert run.reply["content"]["evalue"] == err["evalue"]
    assert run.reply["content"]["traceback"] == err["traceback"]
    return err


def test_interrupt_ends_the_cell_with_a_short_traceback_saying_what_was_cancelled(kernel) -> None:
    kernel.ok(
        "import carme, time\n@carme.remote\ndef sleeper():\n    print('started', flush=True)\n"
        "    time.sleep(60)\n\ndef run_all():\n    return carme.get([sleeper.remote() for _ in range(3)])"
    )
    err = _interrupt_once_started(kernel, "results = run_all()")
    assert err["evalue"] == "cancelled 3 remote tasks of this cell", err
    text = "\n".join(err["traceback"])
    assert "run_all()" in text and "carme.get(" in text  # the user's frames stay
    assert "_core.py" not in text and "_api.py" not in text and len(text) < 1200, text
    err = _interrupt_once_started(
        kernel, "%%remote --name one\nimport time\nprint('started', flush=True)\ntime.sleep(60)"
    )
    assert err["evalue"] == "cancelled 1 remote task of this cell", err
    text = "\n".join(err["traceback"])
    assert "run_cell_magic" not in text and "magics.py" not in text and len(text) < 300, text
    # interrupting plain Python code says nothing about remote work
    err = _interrupt_once_started(kernel, "print('started', flush=True)\ntime.sleep(60)")
    assert err["evalue"] == "no remote work of this cell was left to cancel", err
    assert kernel.value("carme.get(carme.put(1))") == "1"  # the kernel goes on
