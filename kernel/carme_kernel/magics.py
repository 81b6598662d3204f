"""``%%remote`` and ``%carme``: the cluster from a notebook cell.

Theory of operation
-------------------
``%%remote`` parses its options (``magic_arguments``; ``%%remote?`` documents
them), validates them (``_spec``), analyses the cell body with ``ast``
(``_cell``: which notebook names it reads, which it assigns), joins the cluster
on first use (``_session``), and submits the body as a task — or as a call on a
named actor (``--actor``), or once per node (``--all-nodes``). The task body
lives in ``_exec``, which workers import. The cell then waits for the result
(unless ``--async``), lets the output the task printed arrive, binds
``--pull`` names and returns the value of the last expression, which IPython
displays. A KeyboardInterrupt or ``--timeout`` cancels what the cell launched.

``%carme`` is a line magic with subcommands that show the cluster or change
the connection. In a kernel the views are carme's live widgets
(``carme_kernel.widgets``); in a terminal, or without the widgets, readable
tables (``views``).
"""

from __future__ import annotations

import importlib
import json
import pickle
import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from . import views
from ._cell import CellCode, prepare
from ._exec import CellResult, Namespace, RemoteCellError, run_task
from ._session import NotebookSession
from ._spec import RemoteSpec, build_spec, check_fits, parse_bytes, parse_names, resolve_node
from .engines import NotConnected, parse_target

__all__ = ["CarmeMagics", "NamespaceLostError", "RemoteTimeoutError"]

_NAMESPACE_PREFIX = "carme_kernel.namespace:"
_FLUSH_WAIT_S = 1.0
_NOT_SHIPPABLE = frozenset({"get_ipython", "exit", "quit", "In", "Out"})


def _remote_error(exc: BaseException) -> RemoteCellError | None:
    """The RemoteCellError inside a carme task error (its ``cause``), if any."""
    cur: BaseException | None = exc
    for _ in range(8):
        if cur is None:
            return None
        if type(cur) is RemoteCellError:
            return cur
        nxt = getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else cur.__cause__
    return None


class RemoteTimeoutError(TimeoutError):
    """A ``%%remote`` cell ran past ``--timeout`` and was cancelled."""

    def _render_traceback_(self) -> list[str]:
        return [f"RemoteTimeoutError: {self}"]


class NamespaceLostError(RuntimeError):
    """The actor behind a ``%%remote --actor`` namespace died."""

    def _render_traceback_(self) -> list[str]:
        return [f"NamespaceLostError: {self}"]


@magics_class
class CarmeMagics(Magics):
    """The carme magics; ``session`` holds the connection and cell bookkeeping."""

    def __init__(self, shell: Any, session: NotebookSession) -> None:
        super().__init__(shell)
        self.session = session
        # remote function / actor class per engine (carme's and Ray's differ)
        self._task_fns: dict[str, Any] = {}
        self._ns_classes: dict[str, Any] = {}

    @property
    def ip(self) -> Any:
        """The shell (never None once registered)."""
        return self.shell

    # ------------------------------------------------------------------ %%remote
    @magic_arguments()
    @argument("--cpus", type=float, metavar="N", help="CPUs the cell needs (default 1).")
    @argument(
        "--gpus", type=float, metavar="N", help="GPUs the cell needs; CUDA_VISIBLE_DEVICES is set."
    )
    @argument(
        "--memory",
        type=parse_bytes,
        metavar="BYTES",
        help="Memory to reserve, e.g. 2000000000 or 2G.",
    )
    @argument(
        "--resources",
        metavar="JSON",
        help="""Custom resources as a JSON object, e.g. '{"accel": 1}'.""",
    )
    @argument(
        "--node",
        metavar="NODE_ID",
        help="Run on this node (an id or a unique prefix; see %%carme nodes).",
    )
    @argument(
        "--retries", type=int, metavar="N", help="Retries if the worker dies (default 3, as tasks)."
    )
    @argument(
        "--timeout",
        type=float,
        metavar="S",
        help="Cancel the cell if it runs longer than S seconds.",
    )
    @argument("--name", metavar="LABEL", help="Name of the task in the timeline and state API.")
    @argument("--push", type=parse_names, metavar="a,b", help="Ship these notebook names too.")
    @argument(
        "--pull", type=parse_names, metavar="x,y", help="Bring these names back into the notebook."
    )
    @argument(
        "--async",
        dest="async_",
        action="store_true",
        help="Return at once; the result's ObjectRef is bound to -o NAME. Output keeps streaming.",
    )
    @argument(
        "-o",
        "--out",
        default="_remote",
        metavar="NAME",
        help="Variable for the --async ObjectRef (default _remote).",
    )
    @argument(
        "--actor",
        metavar="NAME",
        help="Run in a persistent remote namespace NAME (created on first use with the given "
        "resources); its variables live across cells. %%carme drop NAME ends it.",
    )
    @argument(
        "--all-nodes",
        action="store_true",
        help="Run once on every node; the value is {node id: result}.",
    )
    @cell_magic
    def remote(self, line: str, cell: str) -> Any:
        """Run the cell on the carme cluster and show the value of its last expression.

        The notebook names the cell reads are shipped with it; names it assigns
        stay remote unless pulled with --pull. Output the cell prints appears
        here, live. Interrupting the kernel cancels the cell's work.

        Examples::

            %%remote --cpus 2 --pull total
            total = sum(data)
            total / len(data)

            %%remote --actor model --gpus 1
            weights = load()          # stays in the namespace 'model'
        """
        try:
            # posix splitting removes the quotes around JSON and labels
            args = self.remote.parser.parse_args(shlex.split(line))  # type: ignore[attr-defined]
        except ValueError as exc:
            raise UsageError(f"%%remote {line.strip()}: {exc}; check the quotes") from None
        except UsageError as exc:
            raise UsageError(
                f"%%remote {line.strip()}: {exc}; see %%remote? for the options"
            ) from None
        spec = build_spec(args)
        try:
            label = self.session.cell_label()
            code = prepare(cell, f"<remote cell {label}>", header=f"%%remote {line}\n")
        except SyntaxError as exc:
            raise UsageError(
                f"the cell body is not valid Python: {exc.msg} (line {exc.lineno}). %%remote runs "
                "plain Python on the cluster; line magics and shell escapes (!cmd) cannot run there"
            ) from None
        pushed = self._shipped(code, spec)
        if not spec.actor:
            never_set = [n for n in spec.pull if n not in code.names.assigns]
            if never_set:
                raise UsageError(
                    f"--pull {','.join(never_set)}: the cell never assigns "
                    f"{', '.join(never_set)}; assign it in the cell or drop it from --pull"
                    + (
                        f" (the cell assigns: {', '.join(sorted(code.names.assigns))})"
                        if code.names.assigns
                        else ""
                    )
                )
        carme = self.session.connect()
        nodes = carme.nodes()
        node_id = resolve_node(spec.node, nodes) if spec.node else None
        if spec.actor and spec.actor in self.session.namespaces:
            pass  # resources were fixed when the namespace was created
        else:
            check_fits(spec, nodes, node_id)
        if spec.all_nodes:
            return self._run_all_nodes(carme, spec, code, pushed, nodes)
        if spec.actor:
            handle = self._namespace(carme, spec, node_id)
            submit = handle.run.options(**({"name": spec.name} if spec.name else {})).remote
        else:
            opts = spec.task_options()
            opts.setdefault("name", f"%%remote {self.session.cell_label()}")
            if node_id:
                opts["scheduling_strategy"] = self._affinity(carme, node_id)
            submit = self._task(carme).options(**opts).remote
        ref = self._submit(submit, code, pushed, list(spec.pull), spec.is_async)
        if spec.is_async:
            self.ip.user_ns[spec.out] = ref
            return None
        result = self._wait(carme, [ref], spec)[0]
        return self._finish(spec, code, result)

    # -- helpers of %%remote ---------------------------------------------------
    def _shipped(self, code: CellCode, spec: RemoteSpec) -> dict[str, Any]:
        ns = self.ip.user_ns
        hidden = self.ip.user_ns_hidden
        missing = [n for n in spec.push if n not in ns]
        if missing:
            raise UsageError(
                f"--push {','.join(missing)}: the notebook has no variable named "
                f"{', '.join(missing)}; define it first or drop it from --push"
            )
        bad = sorted((code.names.reads | set(spec.push)) & _NOT_SHIPPABLE)
        if bad:
            raise UsageError(
                f"the cell uses {', '.join(bad)}, which exist only in the notebook's IPython shell; "
                "%%remote cells run plain Python on the cluster"
            )
        shipped: dict[str, Any] = {}
        for name in sorted(code.names.reads | set(spec.push)):
            if name not in ns:
                continue
            value = ns[name]
            if name in hidden and hidden[name] is value and name not in spec.push:
                continue  # IPython's own names (_, _oh, ...), unless the user rebound them
            shipped[name] = value
        return shipped

    def _task(self, api: Any) -> Any:
        fn = self._task_fns.get(api.__name__)
        if fn is None:
            fn = self._task_fns[api.__name__] = api.remote(run_task)
        return fn

    @staticmethod
    def _affinity(api: Any, node_id: str) -> Any:
        """The engine's NodeAffinitySchedulingStrategy (same module path in carme and Ray)."""
        strategies = importlib.import_module(f"{api.__name__}.util.scheduling_strategies")
        return strategies.NodeAffinitySchedulingStrategy(node_id, soft=False)

    def _namespace(self, api: Any, spec: RemoteSpec, node_id: str | None) -> Any:
        assert spec.actor is not None
        handle = self.session.namespaces.get(spec.actor)
        if handle is not None:
            return handle
        cls = self._ns_classes.get(api.__name__)
        if cls is None:
            cls = self._ns_classes[api.__name__] = api.remote(Namespace)
        opts = spec.resource_options()
        if node_id:
            opts["scheduling_strategy"] = self._affinity(api, node_id)
        handle = cls.options(
            name=_NAMESPACE_PREFIX + spec.actor, get_if_exists=True, **opts
        ).remote()
        self.session.namespaces[spec.actor] = handle
        return handle

    def _submit(
        self,
        submit: Callable[..., Any],
        code: CellCode,
        pushed: dict[str, Any],
        pull: list[str],
        unwrap: bool,
    ) -> Any:
        try:
            return submit(code, pushed, pull, unwrap)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            culprit = _unpicklable(pushed)
            if culprit is None:
                raise
            raise UsageError(
                f"cannot ship the notebook variable {culprit!r} to the cluster ({exc}); "
                "create it inside the cell instead"
            ) from None

    def _wait(self, carme: Any, refs: list[Any], spec: RemoteSpec) -> list[Any]:
        GetTimeoutError = carme.exceptions.GetTimeoutError  # noqa: N806
        RayActorError = carme.exceptions.RayActorError  # noqa: N806
        try:
            return list(carme.get(refs, timeout=spec.timeout))
        except KeyboardInterrupt:
            self._cancel(carme, refs)
            raise
        except GetTimeoutError:
            self._cancel(carme, refs)
            raise RemoteTimeoutError(
                f"%%remote: the cell did not finish within --timeout {spec.timeout:g} s and was "
                "cancelled; raise --timeout or drop it"
            ) from None
        except RayActorError as exc:
            if spec.actor is None:
                raise
            self.session.namespaces.pop(spec.actor, None)
            raise NamespaceLostError(
                f"the --actor namespace {spec.actor!r} died and its variables are lost "
                f"({type(exc).__name__}); run the cell again to start a fresh namespace"
            ) from None
        except Exception as exc:
            remote = _remote_error(exc)
            if remote is not None:
                raise remote from None
            raise

    def _cancel(self, carme: Any, refs: list[Any]) -> None:
        self.session.cancel_cell()
        for ref in refs:
            try:
                carme.cancel(ref, force=False)
            except Exception:
                pass

    def _await_output(self, newlines: int) -> None:
        tag = self.session.current_tag()
        if self.session.kernel is None or tag is None or not newlines:
            return
        run = tag["run"]
        self.session.router.wait_for(run, newlines, _FLUSH_WAIT_S)

    def _finish(self, spec: RemoteSpec, code: CellCode, result: CellResult) -> Any:
        if result.missing:
            raise UsageError(
                f"--pull {','.join(result.missing)}: namespace {spec.actor!r} has no variable named "
                f"{', '.join(result.missing)}; assign it in the cell or drop it from --pull"
            )
        self._await_output(result.newlines)
        self.ip.user_ns.update(result.pulled)
        return result.value if code.last_expr is not None else None

    def _run_all_nodes(
        self,
        carme: Any,
        spec: RemoteSpec,
        code: CellCode,
        pushed: dict[str, Any],
        nodes: list[dict[str, Any]],
    ) -> Any:
        alive = [str(n.get("NodeID")) for n in nodes if n.get("Alive", True)]
        fn = self._task(carme)
        refs = {}
        for node_id in alive:
            opts = spec.task_options()
            opts.setdefault("name", f"%%remote --all-nodes {self.session.cell_label()}")
            opts["scheduling_strategy"] = self._affinity(carme, node_id)
            refs[node_id] = self._submit(fn.options(**opts).remote, code, pushed, [], spec.is_async)
        if spec.is_async:
            self.ip.user_ns[spec.out] = refs
            return None
        results = self._wait(carme, list(refs.values()), spec)
        self._await_output(sum(r.newlines for r in results))
        if code.last_expr is None:
            return None
        return {node_id: r.value for node_id, r in zip(refs, results, strict=True)}

    # ------------------------------------------------------------------ %carme
    @line_magic
    def carme(self, line: str) -> Any:
        """Show or change the cluster this kernel uses.

        %carme status              where the kernel is connected (default)
        %carme nodes               the nodes and their resources
        %carme gpus                GPUs per node
        %carme objects             objects in the store
        %carme actors              actors
        %carme timeline [FILE]     recent task spans; with FILE, write Chrome trace JSON (Perfetto)
        %carme connect ADDRESS     join the cluster at ADDRESS from now on: HOST:PORT (a carme
                                   head), ray (Ray: RAY_ADDRESS, else a local Ray),
                                   ray:HOST:PORT (a Ray cluster's GCS), ray://HOST:PORT
                                   (Ray Client)
        %carme disconnect          leave the cluster (ends this kernel's work on it)
        %carme drop NAME           end the %%remote --actor namespace NAME
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%carme {line}: {exc}") from None
        sub, rest = (words[0], words[1:]) if words else ("status", [])
        handler = getattr(self, f"_carme_{sub}", None)
        if handler is None:
            raise UsageError(
                f"%carme {sub}: unknown subcommand; expected one of status, nodes, gpus, objects, "
                "actors, timeline, connect, disconnect, drop (see %carme?)"
            )
        return handler(rest)

    @staticmethod
    def _no_args(sub: str, rest: list[str]) -> None:
        if rest:
            raise UsageError(f"%carme {sub} takes no arguments, got {' '.join(rest)!r}")

    def _carme_status(self, rest: list[str]) -> views.View:
        self._no_args("status", rest)
        backend = self.session.backend
        info: dict[str, Any] = {}
        if not backend.is_connected():
            target = self.session.address or _env_address()
            info["connected"] = "not yet (joins on first use)"
            info["will join"] = target or "an embedded local carme cluster"
            return views.status_view(info)
        api = backend.api()
        info["engine"] = backend.engine
        info["connected to"] = self.session.connected_to or backend.describe()
        info["versions"] = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
        nodes = [n for n in api.nodes() if n.get("Alive", True)]
        info["nodes"] = len(nodes)
        info["resources"] = views.resources_text(api.cluster_resources())
        info["available"] = views.resources_text(api.available_resources())
        gaps = backend.capabilities.gaps()
        if gaps:
            info["not available"] = "; ".join(gaps)
        if self.session.namespaces:
            info["namespaces"] = ", ".join(sorted(self.session.namespaces))
        return views.status_view(info)

    def _live(self, kind: str, table: Callable[[], views.View]) -> Any:
        """The live widget for ``kind`` in a kernel with carme's widgets, else ``table()``."""
        if self.session.kernel is not None:  # in a terminal the text tables read better
            try:
                from .widgets import view
            except ImportError:
                pass
            else:
                return view(kind)
        return table()

    def _carme_nodes(self, rest: list[str]) -> Any:
        self._no_args("nodes", rest)
        carme = self.session.connect()
        return self._live("nodes", lambda: views.nodes_view(carme.nodes()))

    def _carme_gpus(self, rest: list[str]) -> Any:
        self._no_args("gpus", rest)
        carme = self.session.connect()
        return self._live("gpus", lambda: views.gpus_view(carme.nodes()))

    def _carme_objects(self, rest: list[str]) -> Any:
        self._no_args("objects", rest)
        self.session.connect()
        backend = self.session.backend
        return self._live("objects", lambda: views.objects_view(backend.state_rows("objects")))

    def _carme_actors(self, rest: list[str]) -> views.View:
        self._no_args("actors", rest)
        self.session.connect()
        return views.actors_view(self.session.backend.state_rows("actors"))

    def _carme_timeline(self, rest: list[str]) -> Any:
        if len(rest) > 1:
            raise UsageError("%carme timeline takes at most one argument, the file to write")
        self.session.connect()
        backend = self.session.backend
        if rest:
            with open(rest[0], "w") as f:
                json.dump(backend.timeline_events(), f)
            print(f"wrote the timeline to {rest[0]}; open it in https://ui.perfetto.dev")
            return None
        return self._live("timeline", lambda: views.timeline_view(backend.timeline_events()))

    def _carme_connect(self, rest: list[str]) -> views.View:
        if len(rest) != 1:
            raise UsageError(
                "%carme connect expects one ADDRESS: HOST:PORT of a carme head (e.g. "
                "127.0.0.1:6380), ray, ray:HOST:PORT or ray://HOST:PORT"
            )
        try:
            parse_target(rest[0])
        except ValueError as exc:
            raise UsageError(f"%carme connect {rest[0]}: {exc}") from None
        try:
            self.session.connect(rest[0])
        except NotConnected as exc:
            raise UsageError(f"%carme connect {rest[0]}: {exc}") from None
        except Exception as exc:
            raise UsageError(
                f"%carme connect {rest[0]}: could not join the cluster there "
                f"({type(exc).__name__}: {exc}); check the address (host:port of the head), "
                "or drop %carme connect to use an embedded local cluster"
            ) from None
        return self._carme_status([])

    def _carme_disconnect(self, rest: list[str]) -> None:
        self._no_args("disconnect", rest)
        self.session.disconnect()

    def _carme_drop(self, rest: list[str]) -> None:
        if len(rest) != 1:
            raise UsageError("%carme drop expects the NAME of a %%remote --actor namespace")
        name = rest[0]
        handle = self.session.namespaces.pop(name, None)
        carme = self.session.connect()
        if handle is None:
            try:
                handle = carme.get_actor(_NAMESPACE_PREFIX + name)
            except ValueError:
                known = ", ".join(sorted(self.session.namespaces)) or "none"
                raise UsageError(
                    f"%carme drop {name}: no namespace named {name!r}; namespaces: {known}"
                ) from None
        carme.kill(handle)


def _env_address() -> str | None:
    from carme.notebook import default_address

    return default_address().address


def _unpicklable(values: dict[str, Any]) -> str | None:
    import cloudpickle

    for name, value in values.items():
        try:
            cloudpickle.dumps(value)
        except Exception:
            return name
    return None
