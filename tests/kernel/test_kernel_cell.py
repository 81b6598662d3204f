"""The ast analysis behind %%remote: which names a cell reads and assigns."""

from __future__ import annotations

import pytest

from carme_kernel._cell import analyze, ends_with_semicolon, prepare


def names(src: str) -> tuple[set[str], set[str]]:
    n = analyze(src)
    return set(n.reads), set(n.assigns)


def test_reads_before_assignment_are_reads() -> None:
    assert names("y = x + 1") == ({"x"}, {"y"})
    assert names("x = x + 1") == ({"x"}, {"x"})
    assert names("x = 1\ny = x") == (set(), {"x", "y"})


def test_augassign_reads_target() -> None:
    assert names("total += step") == ({"total", "step"}, {"total"})


def test_imports_bind() -> None:
    assert names("import numpy as np\nimport os.path\nfrom math import pi\nnp.ones(3)") == (
        set(),
        {"np", "os", "pi"},
    )


def test_function_body_reads_globals_not_locals() -> None:
    src = "def f(a, b=default):\n    c = a + offset\n    return helper(c)\nf(1)"
    reads, assigns = names(src)
    assert reads == {"default", "offset", "helper"}
    assert assigns == {"f"}


def test_function_global_bound_later_in_cell_is_not_shipped() -> None:
    reads, _ = names("def f():\n    return k\nk = 2\nf()")
    assert reads == set()


def test_global_declaration_in_function_assigns() -> None:
    reads, assigns = names("def bump():\n    global counter\n    counter += 1\nbump()")
    assert "counter" in assigns
    assert "counter" in reads


def test_comprehension_scope() -> None:
    reads, assigns = names("ys = [x * k for x in xs if x > lo]")
    assert reads == {"k", "xs", "lo"}
    assert assigns == {"ys"}


def test_lambda_and_class() -> None:
    reads, assigns = names(
        "class A(Base):\n    z = scale\n    def m(self):\n        return off\ng = lambda v: v * w"
    )
    assert reads == {"Base", "scale", "off", "w"}
    assert assigns == {"A", "g"}


def test_for_with_except_and_walrus() -> None:
    src = (
        "for i in items:\n    pass\n"
        "try:\n    pass\nexcept Err as e:\n    pass\n"
        "if (n := len(items)) > 0:\n    pass\n"
    )
    reads, assigns = names(src)
    assert reads == {"items", "Err", "len"}
    assert assigns == {"i", "e", "n"}


def test_builtins_are_reported_and_filtered_later() -> None:
    reads, _ = names("print(len(data))")
    assert reads == {"print", "len", "data"}


def test_syntax_error() -> None:
    with pytest.raises(SyntaxError):
        analyze("x = = 1")


def test_semicolon_detection() -> None:
    assert ends_with_semicolon("x = 1\nx;")
    assert ends_with_semicolon("x;  # quiet")
    assert not ends_with_semicolon("x")
    assert not ends_with_semicolon("s = ';'")


def test_prepare_splits_last_expression_and_keeps_notebook_lines() -> None:
    code = prepare("a = 1\na + 1\n", "<c>", header="%%remote --cpus 1\n")
    assert code.last_expr is not None
    assert code.last_expr.body.lineno == 3  # line 1 is the %%remote line
    assert code.source.splitlines()[0] == "%%remote --cpus 1"
    assert len(code.body.body) == 1


def test_prepare_no_result_when_semicolon_or_statement() -> None:
    assert prepare("a = 1\na;", "<c>").last_expr is None
    assert prepare("a = 1", "<c>").last_expr is None


def test_prepare_syntax_error_line_numbers_match_cell() -> None:
    with pytest.raises(SyntaxError) as info:
        prepare("ok = 1\nbad = = 2\n", "<c>", header="%%remote\n")
    assert info.value.lineno == 3
