"""%%remote / %carme misuse is caught before anything reaches a cluster (in-process shell)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import carme_kernel


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    carme_kernel.load_ipython_extension(shell)
    yield shell
    carme_kernel.unload_ipython_extension(shell)


@pytest.mark.parametrize(
    ("line", "cell", "expected"),
    [
        ("--bogus", "1", "unrecognized arguments: --bogus"),
        ("--cpus many", "1", "invalid float value"),
        ("--cpus -1", "1", "--cpus expects a number >= 0"),
        ("--memory lots", "1", "expected a number of bytes"),
        ("--resources '{bad'", "1", "--resources expects a JSON object"),
        ("--resources '[1]'", "1", "not list"),
        ("--resources '{\"CPU\": 2}'", "1", "ask for CPU with --cpus"),
        ('--resources \'{"accel": "x"}\'', "1", "must be a number"),
        ("--retries 1.5", "1", "invalid int value"),
        ("--timeout 0", "1", "--timeout expects a number of seconds > 0"),
        ("--pull y", "x = 1", "the cell never assigns y"),
        ("--pull 1y", "x = 1", "is not a name"),
        ("--name 'unbalanced", "1", "check the quotes"),
        ("--push nope_not_defined", "1", "the notebook has no variable named nope_not_defined"),
        ("--async --pull x", "x = 1", "--pull needs the cell to finish"),
        ("--all-nodes --node abc", "1", "cannot be combined with --node"),
        ("--all-nodes --actor a", "1", "cannot be combined with --actor"),
        ("--actor a --retries 2", "1", "takes no --retries"),
        ("-o 1x --async", "1", "-o expects a variable name"),
        ("", "x = = 1", "not valid Python"),
        ("", "!ls", "not valid Python"),
        (
            "",
            "get_ipython().run_line_magic('time', '')",
            "exist only in the notebook's IPython shell",
        ),
    ],
)
def test_remote_misuse_raises_usage_error(
    ip: InteractiveShell, line: str, cell: str, expected: str
) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("remote", line, cell)
    assert expected in str(info.value)


def test_remote_help_documents_every_option(ip: InteractiveShell) -> None:
    doc = ip.find_cell_magic("remote").__doc__ or ""
    for opt in (
        "--cpus",
        "--gpus",
        "--memory",
        "--resources",
        "--node",
        "--retries",
        "--timeout",
        "--name",
        "--push",
        "--pull",
        "--async",
        "--actor",
        "--all-nodes",
        "-o",
    ):
        assert opt in doc, opt


def test_carme_unknown_subcommand(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="unknown subcommand"):
        ip.run_line_magic("carme", "frobnicate")
    with pytest.raises(UsageError, match="expects one ADDRESS"):
        ip.run_line_magic("carme", "connect")
    with pytest.raises(UsageError, match="takes no arguments"):
        ip.run_line_magic("carme", "nodes extra")


def test_load_is_idempotent(ip: InteractiveShell) -> None:
    session = ip._carme_session  # type: ignore[attr-defined]
    carme_kernel.load_ipython_extension(ip)
    assert ip._carme_session is session  # type: ignore[attr-defined]


def test_cell_tags_follow_cells(ip: InteractiveShell) -> None:
    session = ip._carme_session  # type: ignore[attr-defined]
    ip.run_cell("seen = get_ipython()._carme_session.current_tag()", store_history=True)
    tag = ip.user_ns["seen"]
    assert tag["execution_count"] == ip.execution_count - 1
    assert tag["run"]
    assert session.current_tag() == tag  # between cells: the last cell's tag


def test_object_refs_do_not_enter_out(
    ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ObjectRef:
        pass

    session = ip._carme_session  # type: ignore[attr-defined]
    monkeypatch.setattr(session.backend, "is_remote_object", lambda v: isinstance(v, ObjectRef))
    ip.user_ns["ObjectRef"] = ObjectRef
    ip.run_cell("ObjectRef()", store_history=True)
    n = ip.execution_count - 1
    assert n not in ip.user_ns["Out"] and f"_{n}" not in ip.user_ns
    assert f"_{n}" not in ip.user_ns_hidden
    assert isinstance(ip.user_ns["_"], ObjectRef)  # _ still works, and rotates away
    ip.run_cell("[ObjectRef(), ObjectRef()]", store_history=True)
    assert ip.execution_count - 1 not in ip.user_ns["Out"]
    ip.run_cell("41 + 1", store_history=True)
    assert ip.user_ns["Out"][ip.execution_count - 1] == 42
