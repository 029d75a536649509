"""The ``jaxops`` command line: ``list``, ``check``, ``plan`` and ``demo``.

Run it as the console script ``jaxops`` or as ``python -m jaxops``::

    jaxops list examples/mlp_ops.py          # ops, schemas, kernels, fake/autograd/vmap
    jaxops check examples.mlp_ops            # opcheck every op with sample inputs
    jaxops plan examples/mlp_ops.py:loss --shape params.w1=16,32 ... --shape x=b,16
    jaxops plan model.py:loss --abstract model.py:make_args --grad   # Equinox Modules
    jaxops demo                              # the end-to-end tour (CPU, < 1 minute)

A ``MODULE`` is a dotted module name (importable from the current directory,
which is put on ``sys.path`` like ``python -m`` does) or a path to a ``.py``
file.  The ops of a module are the ``CustomOp`` objects among its attributes
plus every registered op whose definition site is in the module's file.

Security: ``list``, ``check`` and ``plan`` *import* the modules and files they
are given, which runs their code, and put the current directory first on
``sys.path`` (so a ``json.py`` there shadows the standard library's): run them
only on code you trust, from a directory you trust.  ``jaxops --help`` says so.

Exit codes: 0 success, 1 a check failed (or there was nothing to check),
2 a usage error (bad arguments, a module that cannot be imported).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, TextIO

from jaxops.describe import describe_op

__all__ = ["CliError", "abstract_args_from", "build_parser", "describe_op", "import_module", "main", "module_ops", "parse_shape"]


class CliError(Exception):
    """A usage error reported as ``jaxops: error: ...`` with exit code 2."""


# --------------------------------------------------------------------- modules
def import_module(spec: str) -> ModuleType:
    """Import ``spec``: a dotted module name or a path to a ``.py`` file.

    The current directory is put on ``sys.path`` first (as ``python -m`` does),
    so ``examples.mlp_ops`` works from the repository root.  A file path is
    imported under the module name of its file stem (re-used when that module
    was already imported from the same file).

    >>> import_module("json").__name__
    'json'
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise CliError(f"no such file: {spec}")
        name = os.path.splitext(os.path.basename(path))[0]
        existing = sys.modules.get(name)
        if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == path:
            return existing
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise CliError(f"cannot import {spec}: not a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        if e.name is not None and (spec == e.name or spec.startswith(e.name + ".")):
            raise CliError(f"cannot import module {spec!r}: {e}") from e
        raise


def _import_or_error(spec: str) -> ModuleType:
    """:func:`import_module`, turning an exception raised by the module into a :class:`CliError`."""
    try:
        return import_module(spec)
    except CliError:
        raise
    except Exception as e:  # noqa: BLE001 - any error in user code is reported, not a traceback
        raise CliError(f"importing {spec} raised {type(e).__name__}: {e}") from e


def _where_file(where: str) -> str | None:
    """The file part of a ``file.py:LINE`` location (None when it has no line)."""
    file, sep, line = where.rpartition(":")
    if not sep or not line.isdigit():
        return None
    return os.path.abspath(file)


def module_ops(module: ModuleType) -> list[Any]:
    """The ops a module defines, sorted by name.

    Those are the ``CustomOp`` attributes of the module and every registered op
    whose definition site (``op.definition.where``) is in the module's file; an op that
    was redefined under the same name is reported as the registered one.
    """
    from jaxops import registry
    from jaxops.op import CustomOp

    found: dict[str, Any] = {}
    for value in vars(module).values():
        if isinstance(value, CustomOp):
            found[value.name] = value
    file = getattr(module, "__file__", None)
    if file:
        path = os.path.abspath(file)
        for op in registry.all_ops():
            if _where_file(str(getattr(getattr(op, "definition", None), "where", ""))) == path:
                found[op.name] = op
    current = []
    for name, op in found.items():
        try:
            current.append(registry.lookup(name))
        except KeyError:
            current.append(op)
    return sorted(current, key=lambda o: o.name)


# ------------------------------------------------------------------------ list
def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    from jaxops import registry

    if args.modules:
        ops: dict[str, Any] = {}
        for spec in args.modules:
            for op in module_ops(_import_or_error(spec)):
                ops[op.name] = op
        selected = sorted(ops.values(), key=lambda o: o.name)
    else:
        selected = sorted(registry.all_ops(), key=lambda o: o.name)
    if not selected:
        where = " in " + ", ".join(args.modules) if args.modules else ""
        print(f"no ops found{where}", file=out)
        return 0
    for op in selected:
        d = describe_op(op)
        print(f"{d['name']}{d['schema']}", file=out)
        for key in ("kernels", "fake", "autograd", "vmap", "other"):
            if d[key]:
                print(f"    {key:<9} {d[key]}", file=out)
    print(f"{len(selected)} op{'s' if len(selected) != 1 else ''}", file=out)
    return 0


# ----------------------------------------------------------------------- check
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def _quiet_callback_logs(enabled: bool) -> Iterator[None]:
    """Silence JAX's ``jax.pure_callback failed`` tracebacks while checks run.

    A failing host kernel is reported in the check's report line already; JAX also
    logs the whole traceback of the callback to stderr, once per failing call.
    """
    logger = logging.getLogger("jax._src.callback")
    old = logger.level
    if enabled:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    with _quiet_callback_logs(not args.verbose):
        return _run_checks(args, out)


def _run_checks(args: argparse.Namespace, out: TextIO) -> int:
    from jaxops.opcheck import DEFAULT_TEST_UTILS, opcheck
    from jaxops.samples import has_sample_inputs, sample_inputs

    test_utils: tuple[str, ...] = DEFAULT_TEST_UTILS
    if args.checks:
        test_utils = tuple(c.strip() for c in args.checks.split(",") if c.strip())
        unknown = [c for c in test_utils if c not in DEFAULT_TEST_UTILS]
        if unknown:
            raise CliError(f"unknown check(s) {unknown}; choose from {', '.join(DEFAULT_TEST_UTILS)}")
    ops: dict[str, Any] = {}
    for spec in args.modules:
        for op in module_ops(_import_or_error(spec)):
            ops[op.name] = op
    width = max((len(n) for n in ops), default=0)
    checked = passed = failed = 0
    skipped: list[str] = []
    for name in sorted(ops):
        op = ops[name]
        if not has_sample_inputs(op):
            skipped.append(name)
            print(f"SKIP  {name:<{width}}  no sample inputs (jaxops.samples.register_sample_inputs)", file=out)
            continue
        try:
            samples = sample_inputs(op)
        except Exception as e:  # noqa: BLE001 - a broken sample function is a failure of that op
            failed += 1
            print(f"FAIL  {name:<{width}}  sample inputs raised {type(e).__name__}: {_first_line(e)}", file=out)
            continue
        if not samples:
            skipped.append(name)
            print(f"SKIP  {name:<{width}}  the sample-input function returned no samples", file=out)
            continue
        checked += 1
        failures: dict[str, list[tuple[int, BaseException]]] = {c: [] for c in test_utils}
        for i, (sargs, skwargs) in enumerate(samples):
            try:
                results = opcheck(op, sargs, skwargs, test_utils=test_utils, raise_exception=False)
            except Exception as e:  # noqa: BLE001 - e.g. the sample does not bind to the schema
                for c in test_utils:
                    failures[c].append((i, e))
                continue
            for c in test_utils:
                r = results.get(c)
                if isinstance(r, BaseException):
                    failures[c].append((i, r))
        n = len(samples)
        for c in test_utils:
            if not failures[c]:
                passed += 1
                print(f"PASS  {name:<{width}}  {c}  ({n} sample{'s' if n != 1 else ''})", file=out)
                continue
            failed += 1
            i, err = failures[c][0]
            bad = len(failures[c])
            print(f"FAIL  {name:<{width}}  {c}  ({bad}/{n} samples; sample {i}): {_first_line(err)}", file=out)
            lines = str(err).strip().splitlines()[1:]
            if not args.verbose:
                lines = [ln for ln in lines if ln.strip().startswith(("registration at fault", "how to fix"))]
            for ln in lines:
                print(f"      {ln.strip()}", file=out)
    print(
        f"{checked} op{'s' if checked != 1 else ''} checked: {passed} passed, {failed} failed, "
        f"{len(skipped)} skipped",
        file=out,
    )
    if failed:
        return 1
    if not checked:
        print("nothing was checked: no op of the module has sample inputs", file=out)
        return 1
    return 0


# ------------------------------------------------------------------------ plan
def parse_shape(spec: str) -> tuple[str, str, str]:
    """Split ``NAME=DIMS[:DTYPE]`` into ``(name, dims, dtype)``; dtype defaults to float32.

    >>> parse_shape("x=b,128:bfloat16")
    ('x', 'b,128', 'bfloat16')
    >>> parse_shape("params.w=16,32")
    ('params.w', '16,32', 'float32')
    >>> parse_shape("s=:int32")
    ('s', '', 'int32')
    """
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise CliError(f"--shape {spec!r}: expected NAME=DIMS[:DTYPE], e.g. x=b,128:float32")
    dims, _, dtype = rest.partition(":")
    return name, dims.strip(), (dtype.strip() or "float32")


def _set_path(tree: dict[str, Any], dotted: str, value: Any, what: str) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise CliError(f"{what}: bad name {dotted!r}")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise CliError(f"{what}: {dotted!r} conflicts with an earlier value for {p!r}")
        node = child
    if parts[-1] in node:
        raise CliError(f"{what}: {dotted!r} is given twice")
    node[parts[-1]] = value


def build_abstract_args(shapes: Sequence[str], statics: Sequence[str] = ()) -> dict[str, Any]:
    """``--shape`` / ``--arg`` specs to a dict of parameter values (dotted names nest dicts).

    Symbolic dimensions of all shapes share one ``jax.export.SymbolicScope``, so
    ``b`` in two shapes is the same dimension.

    >>> args = build_abstract_args(["x=b,4", "p.w=4,2:float16"], ["n=3"])
    >>> str(args["x"].shape[0]), args["p"]["w"].dtype.name, args["n"]
    ('b', 'float16', 3)
    """
    import jax
    import jax.numpy as jnp

    scope = jax.export.SymbolicScope()
    values: dict[str, Any] = {}
    for spec in shapes:
        name, dims, dtype_name = parse_shape(spec)
        try:
            dtype = jnp.dtype(dtype_name)
        except TypeError as e:
            raise CliError(f"--shape {spec!r}: unknown dtype {dtype_name!r}") from e
        try:
            shape = tuple(jax.export.symbolic_shape(dims, scope=scope)) if dims else ()
        except Exception as e:  # noqa: BLE001 - jax raises ValueError/TypeError for bad specs
            raise CliError(f"--shape {spec!r}: bad dimensions {dims!r}: {e}") from e
        _set_path(values, name, jax.ShapeDtypeStruct(shape, dtype), "--shape")
    for spec in statics:
        name, sep, text = spec.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--arg {spec!r}: expected NAME=VALUE (a Python literal)")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        _set_path(values, name.strip(), value, "--arg")
    return values


def _bind(fn: Callable[..., Any], values: dict[str, Any], target: str) -> tuple[list[Any], dict[str, Any]]:
    """Positional args (in parameter order) and keyword args for ``fn`` from ``values``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], dict(values)
    params = sig.parameters
    has_varkw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [n for n in values if n not in params or params[n].kind in (inspect.Parameter.VAR_POSITIONAL,)]
    if unknown and not has_varkw:
        raise CliError(
            f"{target} has no parameter(s) {', '.join(unknown)}; its parameters: {', '.join(params)}"
        )
    missing = [
        n for n, p in params.items()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in values
    ]
    if missing:
        raise CliError(
            f"{target}: give a --shape (or --arg) for parameter(s) {', '.join(missing)}"
        )
    positional: list[Any] = []
    keyword = dict(values)
    for n, p in params.items():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or n not in keyword:
            break
        positional.append(keyword.pop(n))
    return positional, keyword


def _resolve(spec: str, what: str, example: str) -> Any:
    """The object named by ``MODULE:ATTR[.ATTR...]`` (a CliError naming ``what`` otherwise)."""
    module_spec, sep, attr = spec.rpartition(":")
    if not sep or not module_spec or not attr:
        raise CliError(f"{what} {spec!r}: expected MODULE:FUNCTION, e.g. {example}")
    module = _import_or_error(module_spec)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{module_spec} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def abstract_args_from(spec: str, fn: Callable[..., Any], target: str) -> dict[str, Any]:
    """Call ``--abstract MODULE:make_args`` and name its results after ``fn``'s parameters.

    ``make_args()`` takes no arguments and returns the abstract arguments:
    a tuple (or list) of positional arguments, a dict of arguments by
    parameter name, or one value (the first positional argument).  Values may
    be ``jax.ShapeDtypeStruct`` s, pytrees of them, or Equinox Modules built
    with ``eqx.filter_eval_shape`` (their arrays are abstract, their other
    fields static).

    >>> # def make_args():
    >>> #     model = eqx.filter_eval_shape(eqx.nn.MLP, 4, 2, 8, 2, key=jax.random.PRNGKey(0))
    >>> #     return model, jax.ShapeDtypeStruct((4,), jnp.float32)
    """
    maker = _resolve(spec, "--abstract", "model.py:make_args")
    if not callable(maker):
        raise CliError(f"--abstract {spec}: not callable")
    try:
        made = maker()
    except Exception as e:  # noqa: BLE001 - report the user's error in one line
        raise CliError(f"--abstract {spec}: calling it raised {type(e).__name__}: {e}") from e
    if isinstance(made, dict):
        return dict(made)
    positional = list(made) if isinstance(made, (tuple, list)) else [made]
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as e:
        raise CliError(
            f"--abstract {spec}: cannot read the parameters of {target}; return a dict of arguments by name"
        ) from e
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) > len(names):
        raise CliError(
            f"--abstract {spec} returned {len(positional)} positional arguments, but {target} takes "
            f"{len(names)} ({', '.join(names) or 'none'})"
        )
    return dict(zip(names, positional))


def _merge_values(abstract: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    both = sorted(set(abstract) & set(values))
    if both:
        raise CliError(f"parameter(s) {', '.join(both)} given both by --abstract and by --shape/--arg")
    return {**abstract, **values}


def _gradient(fn: Callable[..., Any], first: Any, target: str) -> tuple[Callable[..., Any], str]:
    """``jax.grad(fn)``, or ``eqx.filter_grad(fn)`` when the first argument has non-array leaves (a Module)."""
    import jax

    if all(hasattr(v, "shape") and hasattr(v, "dtype") for v in jax.tree_util.tree_leaves(first)):
        return jax.grad(fn), f"jax.grad({target})"
    try:
        import equinox as eqx
    except ImportError as e:
        raise CliError(
            f"{target}: --grad with a first argument that has non-array leaves needs equinox (eqx.filter_grad)"
        ) from e
    return eqx.filter_grad(fn), f"eqx.filter_grad({target})"


def _cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    from jaxops.plan import plan

    target = args.target
    fn = _resolve(target, "plan target", "examples/mlp_ops.py:loss")
    if not callable(fn):
        raise CliError(f"{target} is not callable")
    values = build_abstract_args(args.shape or (), args.arg or ())
    if args.abstract:
        values = _merge_values(abstract_args_from(args.abstract, fn, target), values)
    positional, keyword = _bind(fn, values, target)
    planned, title = fn, target
    if args.grad:
        if not positional:
            raise CliError(f"{target}: --grad differentiates the first positional parameter; give it a --shape")
        planned, title = _gradient(fn, positional[0], target)
    try:
        result = plan(planned, *positional, **keyword)
    except Exception as e:  # noqa: BLE001 - report the user's error in one line
        raise CliError(f"planning {target} raised {type(e).__name__}: {e}") from e
    print(f"plan of {title}", file=out)
    print(result.table(jax=args.jax) if hasattr(result, "table") else str(result), file=out)
    summary = getattr(result, "summary", None)
    if callable(summary):
        print(summary(), file=out)
    return 0


# ------------------------------------------------------------------------ demo
def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from jaxops import demo

    result = demo.run(steps=args.steps, progress=not args.no_progress, out=out)
    return 0 if result.ok else 1


# ---------------------------------------------------------------------- parser
_TRUST_NOTE = (
    "list, check and plan IMPORT the modules and .py files they are given, which RUNS their code, "
    "and put the current directory first on sys.path (its modules shadow installed ones): use them "
    "only on code you trust, from a directory you trust."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxops`` argument parser (subcommands ``list``, ``check``, ``plan``, ``demo``)."""
    parser = argparse.ArgumentParser(
        prog="jaxops",
        description="PyTorch's custom operators (torch.library) for JAX: inspect, check and plan ops.",
        epilog=_TRUST_NOTE,
    )
    try:
        from jaxops import __version__ as version
    except ImportError:  # pragma: no cover - partial installs
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"jaxops {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", epilog=_TRUST_NOTE, help="list the ops of modules: schema, kernels, fake/autograd/vmap")
    p.add_argument("modules", nargs="*", metavar="MODULE", help="module name or .py path (default: every registered op)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("check", epilog=_TRUST_NOTE, help="run jaxops.opcheck over every op with registered sample inputs")
    p.add_argument("modules", nargs="+", metavar="MODULE", help="module name or .py path")
    p.add_argument("--checks", help="comma-separated subset of the opcheck test_utils (default: all)")
    p.add_argument("-v", "--verbose", action="store_true", help="print whole failure messages and JAX's callback logs")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("plan", epilog=_TRUST_NOTE, help="shape-only plan of a function (jaxops.plan) as a table")
    p.add_argument("target", metavar="MODULE:FUNCTION")
    p.add_argument(
        "--shape", action="append", metavar="NAME=DIMS[:DTYPE]",
        help="an array parameter, e.g. x=b,128:float32 (symbolic dims allowed; params.w=... nests a dict)",
    )
    p.add_argument("--arg", action="append", metavar="NAME=VALUE", help="a non-array parameter (Python literal)")
    p.add_argument(
        "--abstract", metavar="MODULE:MAKE_ARGS",
        help="a function returning the abstract arguments (a tuple, a dict by name, or one value; e.g. "
        "eqx.filter_eval_shape(...) Modules and jax.ShapeDtypeStructs); --shape/--arg fill the rest",
    )
    p.add_argument(
        "--grad", action="store_true",
        help="plan jax.grad(FUNCTION) instead (eqx.filter_grad when the first argument is a Module)",
    )
    p.add_argument(
        "--jax", choices=("line", "per-primitive", "none"), default="line",
        help="how plain JAX primitives outside ops are shown (default: one line)",
    )
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("demo", help="an end-to-end tour on the CPU (under a minute)")
    p.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    ``out`` is where reports go (default ``sys.stdout``); argparse's own usage
    errors and ``--help`` go to the usual streams and exit through ``SystemExit``,
    which is turned into the returned code.
    """
    stream = sys.stdout if out is None else out
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    try:
        return int(args.func(args, stream))
    except CliError as e:
        print(f"jaxops: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
