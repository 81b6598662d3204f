"""The notebook layer on Ray, end to end: a real carme kernel driving a real Ray head.

The head is the session's ``ray_cluster`` (tests/ray_support.py); the kernel joins
it through ``CARME_ADDRESS=ray:HOST:PORT``. Few, small tests: Ray is heavy on 2 cores.
"""

from __future__ import annotations

import json
import time

import pytest

from ray_support import requires_ray

pytestmark = [requires_ray, pytest.mark.processes, pytest.mark.timeout(600)]

SETUP = """
import ray, time
@ray.remote
def shout(n):
    print('shout', n, flush=True)
    return n

@ray.remote
def slow(tag, n):
    for i in range(n):
        print(tag, i, flush=True)
        time.sleep(0.5)
    return tag
"""


def _lines(text: str, prefix: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def _stream_text(kernel, msg_id: str) -> str:
    return "".join(m["content"]["text"] for _, m in kernel.of(msg_id) if m["msg_type"] == "stream")


def _arrived(kernel, msg_id: str, prefix: str, n: int, timeout: float = 120.0) -> list[str]:
    """The ``prefix`` lines in cell ``msg_id`` once ``n`` arrived (or ``timeout`` passed).

    Output of plain Ray tasks is routed by task state, which reaches Ray's state
    API a second or two late: it may arrive after the cell ended (in that cell).
    """
    deadline = time.monotonic() + timeout
    while len(_lines(_stream_text(kernel, msg_id), prefix)) < n and time.monotonic() < deadline:
        kernel.collect(0.5)
    return _lines(_stream_text(kernel, msg_id), prefix)


def _poll(kernel, code: str, want, timeout: float = 60.0) -> str:
    """Run ``code`` (an expression) until ``want(value)``; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = kernel.value(code, timeout=120)
        if want(value) or time.monotonic() > deadline:
            return value
        time.sleep(1.0)


def test_status_output_and_remote_cells_on_ray(ray_kernel, ray_cluster) -> None:
    k = ray_kernel
    status = k.ok("%carme status", timeout=180)
    text = json.dumps(status.result())
    assert "ray" in text and ray_cluster.gcs_address in text, text
    k.ok(SETUP)
    # plain @ray.remote output lands in the launching cell, once
    run = k.ok("ray.get(shout.remote(7))", timeout=120)
    assert _arrived(k, run.msg_id, "shout", 1) == ["shout 7"]
    # %%remote runs on Ray: names in, --pull out, output in the cell
    k.ok("base = 40")
    run = k.ok("%%remote --cpus 1 --pull doubled\nprint('on ray', base)\ndoubled = base * 2\nbase + 2",
               timeout=120)
    assert run.result()["text/plain"] == "42" and "on ray 40" in run.text()
    assert k.value("doubled") == "80"
    # a persistent namespace is a Ray actor
    k.ok("%%remote --actor box\nstate = [1]", timeout=120)
    assert k.ok("%%remote --actor box\nstate.append(2)\nstate", timeout=120).result()[
        "text/plain"] == "[1, 2]"
    k.ok("%carme drop box", timeout=60)
    # misuse is still a UsageError
    err = k.run("%%remote --cpus 99\n1").error()
    assert err is not None and err["ename"] == "UsageError" and "99" in err["evalue"]
    err = k.run("%carme connect ray:nohost").error()
    assert err is not None and "not a Ray address" in err["evalue"]


def test_output_after_the_cell_ended_goes_to_its_cell(ray_kernel) -> None:
    k = ray_kernel
    k.ok(SETUP)
    a = k.submit("ref_a = slow.remote('late-a', 6)")
    k.wait(a)
    b = k.ok("import time\nprint('b start')\ntime.sleep(4)\nprint('b end')")
    assert k.value("ray.get(ref_a)", timeout=120) == "'late-a'"
    assert _arrived(k, a, "late-a", 6) == [f"late-a {i}" for i in range(6)]
    assert "late-a" not in b.text()


def test_cell_tags_state_rows_timeline_and_widgets(ray_kernel) -> None:
    k = ray_kernel
    k.ok(SETUP)
    run = k.ok("tagged = ray.get([shout.remote(i) for i in range(3)])", timeout=120)
    count = run.reply["content"]["execution_count"]
    probe = (
        "from carme_kernel import engines\n"
        "b = engines.active()\n"
        "rows = [r for r in b.state_rows('tasks') if r['name'] == 'shout']\n"
        f"sorted({{(r['cell'] or {{}}).get('execution_count') for r in rows}} & {{{count}}})"
    )
    assert _poll(k, probe, lambda v: v == f"[{count}]") == f"[{count}]"
    spans = (
        "ev = [e for e in engines.active().timeline_events() if e.get('ph') == 'X' "
        f"and (e['args']['cell'] or {{}}).get('execution_count') == {count}]\n"
        "len(ev) >= 3"
    )
    assert _poll(k, spans, lambda v: v == "True", timeout=120) == "True"  # state lags
    widgets = (
        "from carme_kernel.widgets import ClusterView, TimelineView\n"
        "cv = ClusterView(); tv = TimelineView()\n"
        "m = cv.model\n"
        "out = (m['totals']['nodes'], [r['name'] for r in m['totals']['resources']][:1], "
        f"cv.notes[0], any(s['cell'] == 'In [{count}]' for s in tv.model['spans']))\n"
        "cv.close(); tv.close()\n"
        "out"
    )
    assert k.value(widgets, timeout=120) == "(1, ['CPU'], 'engine: ray', True)"


def test_interrupt_cancels_the_cells_tasks(ray_kernel) -> None:
    k = ray_kernel
    # Short sleeps: Ray's gentle cancel raises KeyboardInterrupt between bytecodes, so
    # it does not end one long C-level sleep (ray-project/ray#32954); a second
    # interrupt would force.
    k.ok(SETUP + "\n@ray.remote\ndef nap():\n    while True:\n        time.sleep(0.1)\n")
    k.ok("ray.get(shout.remote(0))", timeout=180)  # connected before the interrupt
    msg = k.submit("ray.get(nap.remote())")
    running = (
        "from ray.util.state import list_tasks\n"
        "sorted({t.state for t in list_tasks(filters=[('name', '=', 'nap')])})"
    )
    time.sleep(3)  # the cell is inside ray.get by now (the task may still be pending)
    k.km.interrupt_kernel()
    err = k.wait(msg, timeout=120).error()
    assert err is not None and err["ename"] == "KeyboardInterrupt", err
    assert err["evalue"] in (  # Ray's task state may not show the task yet: cancelled later
        "cancelled 1 remote task of this cell",
        "cancelling this cell's remote tasks as the engine's task state shows them",
    ), err
    assert "ray/_private" not in "\n".join(err["traceback"]), err  # the user's frames only
    ended = ("FINISHED", "FAILED", "CANCELLED")
    states = _poll(k, running, lambda v: any(e in v for e in ended) and "RUNNING" not in v, 120)
    # nap never ends by itself: any end state is the cancel's doing (Ray reports a
    # cancelled task whose refs the driver dropped as FINISHED or FAILED)
    assert states in ("['FINISHED']", "['FAILED']", "['CANCELLED']"), states


def test_users_own_ray_init_is_adopted(
    monkeypatch: pytest.MonkeyPatch, ray_cluster, request: pytest.FixtureRequest
) -> None:
    monkeypatch.delenv("CARME_ADDRESS", raising=False)  # a kernel that knows of no cluster
    k = request.getfixturevalue("kernel")
    k.ok(f"import ray\nctx = ray.init(address={ray_cluster.gcs_address!r})", timeout=180)
    k.ok(SETUP)
    run = k.ok("ray.get(shout.remote(11))", timeout=120)
    assert _arrived(k, run.msg_id, "shout", 1) == ["shout 11"]
    k.collect(3)  # nothing more comes: Ray's own printer is off, no duplicate
    assert _lines(_stream_text(k, run.msg_id), "shout") == ["shout 11"]
    status = json.dumps(k.ok("%carme status").result())
    assert "engine" in status and "ray" in status, status
    k.ok("ray.shutdown()")
