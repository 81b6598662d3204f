"""Static analysis of a ``%%remote`` cell body: which names it reads and assigns.

Theory of operation
-------------------
A ``%%remote`` cell runs in a namespace on another process, so the notebook
names it needs must be shipped with it, and the names it assigns can be pulled
back. Both sets come from the cell's syntax tree alone (``ast``; nothing is
evaluated):

* Module-level statements are walked in execution order. A name loaded before
  the cell itself has bound it is a *read* (``x = x + 1`` reads ``x``).
* Function, lambda, class and comprehension bodies are analysed with
  ``symtable``: a name they resolve as global is a read too, unless the cell
  binds it at module level (then the cell's own binding is the one used).
* Names bound at module level, and names a nested function declares
  ``global`` and assigns, are *assigns*.

The analysis over-approximates where control flow makes it ambiguous (both
branches of an ``if`` count as executed); shipping a name too many costs a
little bandwidth, one too few breaks the cell. Only reads that exist in the
notebook namespace are shipped, so builtins and typos cost nothing.

:func:`prepare` also splits the cell like IPython does: when the last
statement is an expression (and the cell does not end with ``;``) its value is
the cell's result. Line numbers are shifted so that tracebacks name the lines
as the notebook shows them (the ``%%remote`` line is line 1).
"""

from __future__ import annotations

import ast
import io
import symtable
import tokenize
from dataclasses import dataclass, field

__all__ = ["CellCode", "CellNames", "analyze", "ends_with_semicolon", "prepare"]


@dataclass(frozen=True)
class CellNames:
    """Names a cell reads from its enclosing namespace and names it binds there."""

    reads: frozenset[str] = field(default_factory=frozenset)
    assigns: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class CellCode:
    """A cell body split for remote execution.

    ``body`` is exec'd, then ``last_expr`` (if not None) is eval'd for the result.
    Both are ``ast`` trees with line numbers as the notebook shows them.
    """

    filename: str
    source: str  # the whole cell as the notebook shows it, for tracebacks
    body: ast.Module
    last_expr: ast.Expression | None
    names: CellNames


_SCOPE_NODES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


class _ModuleWalker(ast.NodeVisitor):
    """Collects module-level reads (in execution order) and binds."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.assigned: set[str] = set()

    # -- names -------------------------------------------------------------
    def _load(self, name: str) -> None:
        if name not in self.assigned:
            self.reads.add(name)

    def _store(self, name: str) -> None:
        self.assigned.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        else:
            self._store(node.id)

    # -- statements whose evaluation order differs from field order ----------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
            self._store(node.target.id)
        else:
            self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)
        if node.value is not None or not isinstance(node.target, ast.Name):
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                continue
            self._store(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._store(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self._store(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._store(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.generic_visit(node)
        if node.rest:
            self._store(node.rest)

    def visit_Global(self, node: ast.Global) -> None:
        pass

    # -- nested scopes: only what runs in the module scope now ---------------
    def _decorated(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        for dec in node.decorator_list:
            self.visit(dec)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._decorated(node)
        args = node.args
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default)
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None and arg.annotation is not None:
                self.visit(arg.annotation)
        if node.returns is not None:
            self.visit(node.returns)
        self._store(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._decorated(node)
        for base in node.bases:
            self.visit(base)
        for kw in node.keywords:
            self.visit(kw.value)
        self._store(node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for default in [*node.args.defaults, *[d for d in node.args.kw_defaults if d]]:
            self.visit(default)

    def _comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp
    ) -> None:
        # The first iterable is evaluated in the enclosing scope.
        self.visit(node.generators[0].iter)
        # Walrus targets inside a comprehension bind in the enclosing scope.
        for sub in ast.walk(node):
            if isinstance(sub, ast.NamedExpr) and isinstance(sub.target, ast.Name):
                self._store(sub.target.id)

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_DictComp = _comprehension
    visit_GeneratorExp = _comprehension


def _nested_globals(table: symtable.SymbolTable, reads: set[str], assigns: set[str]) -> None:
    for child in table.get_children():
        for sym in child.get_symbols():
            if not sym.is_global():
                continue
            if sym.is_referenced():
                reads.add(sym.get_name())
            if sym.is_declared_global() and sym.is_assigned():
                assigns.add(sym.get_name())
                # symtable does not mark ``x += 1`` as a reference: ship x if it exists.
                reads.add(sym.get_name())
        _nested_globals(child, reads, assigns)


def analyze(source: str) -> CellNames:
    """Return the names ``source`` reads from and assigns to its global namespace.

    Raises ``SyntaxError`` if ``source`` is not valid Python.
    """
    tree = ast.parse(source, "<cell>", "exec")
    return _analyze_tree(tree, source)


def _analyze_tree(tree: ast.Module, source: str) -> CellNames:
    walker = _ModuleWalker()
    for stmt in tree.body:
        walker.visit(stmt)
    nested_reads: set[str] = set()
    nested_assigns: set[str] = set()
    if any(isinstance(n, _SCOPE_NODES) for n in ast.walk(tree)):
        _nested_globals(symtable.symtable(source, "<cell>", "exec"), nested_reads, nested_assigns)
    reads = walker.reads | (nested_reads - walker.assigned)
    assigns = walker.assigned | nested_assigns
    return CellNames(reads=frozenset(reads), assigns=frozenset(assigns))


def ends_with_semicolon(source: str) -> bool:
    """True if the last code token of ``source`` is ``;`` (IPython then shows no result)."""
    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (
                tokenize.COMMENT,
                tokenize.NL,
                tokenize.NEWLINE,
                tokenize.INDENT,
                tokenize.DEDENT,
                tokenize.ENDMARKER,
            ):
                continue
            last = tok
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


def prepare(source: str, filename: str, header: str = "") -> CellCode:
    """Parse and split a cell body for remote execution.

    ``header`` is the cell text before the body (for a cell magic, the
    ``%%remote ...`` line with its newline): line numbers in the result and in a
    ``SyntaxError`` count it, so they match the notebook.
    """
    if header and not header.endswith("\n"):
        header += "\n"
    padded = "\n" * header.count("\n") + source
    tree = ast.parse(padded, filename, "exec")
    names = _analyze_tree(tree, padded)
    last_expr: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not ends_with_semicolon(source):
        expr_stmt = tree.body.pop()
        assert isinstance(expr_stmt, ast.Expr)
        last_expr = ast.Expression(body=expr_stmt.value)
        ast.copy_location(last_expr, expr_stmt)
    return CellCode(
        filename=filename, source=header + source, body=tree, last_expr=last_expr, names=names
    )
