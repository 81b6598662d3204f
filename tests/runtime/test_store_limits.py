"""The store's size under memory limits: `ulimit -v` (RLIMIT_AS) and cgroups.

Every carme process maps the whole store, so under an address-space limit the default
store is sized to fit, and a size that cannot fit is refused before anything starts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from carme._node import MIN_STORE, store_size

GB = 1 << 30


def test_default_is_a_share_of_memory_and_of_free_shm() -> None:
    assert store_size(None, 10 * GB, 100 * GB, None, 0) == 3 * GB
    assert store_size(None, 100 * GB, 10 * GB, None, 0) == 8 * GB


def test_an_address_space_limit_shrinks_the_default_to_half_of_what_is_left() -> None:
    assert store_size(None, 24 * GB, 24 * GB, 4 * GB, 1 * GB) == int(1.5 * GB)
    with pytest.raises(ValueError, match=r"ulimit -v / RLIMIT_AS\) is .* Raise the limit"):
        store_size(None, 24 * GB, 24 * GB, 1 * GB, 1 * GB - MIN_STORE)


def test_a_given_size_that_cannot_be_mapped_is_refused_with_the_largest_that_can() -> None:
    assert store_size(2 * GB, 24 * GB, 24 * GB, None, 0) == 2 * GB
    with pytest.raises(ValueError, match="Pass at most object_store_memory=1,610,612,736"):
        store_size(2 * GB, 24 * GB, 24 * GB, 4 * GB, 1 * GB)


SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
import numpy as np
import carme
{body}
"""


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(body=textwrap.dedent(body))],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.processes
def test_init_put_get_and_a_task_work_under_ulimit_v_4g() -> None:
    out = _run("""
        carme.init(num_cpus=1)
        a = np.arange(1 << 20)
        r = carme.put(a)
        assert (carme.get(r) == a).all()

        @carme.remote
        def total(x):
            return int(x.sum())
        assert carme.get(total.remote(r)) == int(a.sum())
        carme.shutdown()
        print("ok")
        """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.processes
def test_a_store_too_large_for_ulimit_v_is_refused_at_init() -> None:
    out = _run("""
        try:
            carme.init(num_cpus=1, object_store_memory=3 << 30)
        except ValueError as e:
            print(e)
        print(carme.is_initialized())
        """)
    assert out.returncode == 0, out.stderr
    assert "does not fit in this process's address space" in out.stdout
    assert "Pass at most object_store_memory=" in out.stdout
    assert out.stdout.strip().endswith("False")
