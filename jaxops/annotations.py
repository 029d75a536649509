"""Fakes and call-time shape checks derived from jaxtyping annotations.

When an op's parameters and return are annotated with jaxtyping shapes, the op
gets a fake without ``register_fake`` (so host ops can be traced and planned),
and every call is shape-checked:

>>> import jax, jaxops
>>> from jaxtyping import Array, Float
>>> @jaxops.custom_op("anndoc::matmul", mutates_args=(), host=True)
... def matmul(a: Float[Array, "m k"], b: Float[Array, "k n"]) -> Float[Array, "m n"]:
...     return a @ b
>>> jax.eval_shape(matmul, jax.ShapeDtypeStruct((2, 3), "float32"),
...                jax.ShapeDtypeStruct((3, 5), "float32"))
ShapeDtypeStruct(shape=(2, 5), dtype=float32)

Supported dimension specs: named (``"m"``), fixed (``"3"``, ``"n=3"``),
anonymous (``"_"``, checked for nothing), broadcastable (``"#m"``: size 1
matches anything), symbolic expressions (``"2*n"``, checked once the names in
them are bound), named variadic (``"*batch"``: the same tuple of dims
everywhere) and anonymous variadic (``"..."``: not checked; in the return it is
the broadcast of the parameters' ``...`` shapes).  A return dimension may also
be named after an ``int`` parameter (``def f(x: Float[Array, "n"], k: int) ->
Float[Array, "k"]``).

Output dtype: the promoted dtype of the inputs whose dtype is of the return's
kind (``Float`` from float32 inputs is float32); with no such input, JAX's
default of that kind (float32 / int32 / uint32 / complex64 / bool without
x64).  ``Shaped`` returns promote all array inputs.  Dtypes are not checked at
calls (the schema decides what an argument may be); shapes are.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np

__all__ = ["ArraySpec", "array_spec", "derive_fake", "shape_checker"]

try:  # jaxtyping's private dimension classes (stable across 0.2.x/0.3.x)
    from jaxtyping._array_types import (
        _AnonymousDim,
        _AnonymousVariadicDim,
        _FixedDim,
        _NamedDim,
        _NamedVariadicDim,
        _SymbolicDim,
    )
except ImportError:  # pragma: no cover - a jaxtyping without them: no derived fakes
    _AnonymousDim = _AnonymousVariadicDim = _FixedDim = _NamedDim = _NamedVariadicDim = _SymbolicDim = ()  # type: ignore[assignment,misc]


# Dimension entries: (kind, payload, broadcastable)
#   ("fixed", int), ("named", str), ("anon", None), ("sym", code, text),
#   ("var", str), ("anonvar", None)
class ArraySpec:
    """The shape and dtype constraints of one jaxtyping annotation.

    >>> from jaxtyping import Array, Float
    >>> s = array_spec(Float[Array, "*batch m 3"])
    >>> [d[0] for d in s.dims], s.min_rank, s.variadic
    (['var', 'named', 'fixed'], 2, True)
    """

    __slots__ = ("dims", "dtypes", "text", "min_rank", "variadic", "annotation")

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.text = getattr(annotation, "dim_str", "")
        dts = getattr(annotation, "dtypes", None)
        self.dtypes: frozenset[str] | None = frozenset(dts) if isinstance(dts, (tuple, list)) else None
        dims: list[tuple[Any, ...]] = []
        for d in getattr(annotation, "dims", ()):
            b = bool(getattr(d, "broadcastable", False))
            if isinstance(d, _FixedDim):
                dims.append(("fixed", int(d.size), b))
            elif isinstance(d, _NamedDim):
                dims.append(("named", d.name, b))
            elif isinstance(d, _NamedVariadicDim):
                dims.append(("var", d.name, b))
            elif isinstance(d, _AnonymousVariadicDim):
                dims.append(("anonvar", None, b))
            elif isinstance(d, _SymbolicDim):
                text = d.elem
                code = compile(text, "<jaxtyping dimension>", "eval")
                dims.append(("sym", (code, text), b))
            elif isinstance(d, _AnonymousDim):
                dims.append(("anon", None, b))
            else:  # an unknown future dimension kind: accept anything
                dims.append(("anon", None, b))
        self.dims = dims
        self.variadic = any(k in ("var", "anonvar") for k, _, _ in dims)
        self.min_rank = len(dims) - (1 if self.variadic else 0)

    @property
    def constrains(self) -> bool:
        """Whether the annotation constrains the shape at all (``"..."`` does not)."""
        return not (len(self.dims) == 1 and self.dims[0][0] == "anonvar")

    def __repr__(self) -> str:
        return f"ArraySpec({self.text!r})"


def array_spec(t: Any) -> ArraySpec | None:
    """The :class:`ArraySpec` of a jaxtyping array annotation (``Optional`` allowed), or None.

    >>> from jaxtyping import Array, Int
    >>> array_spec(Int[Array, "n"]).text, array_spec(int)
    ('n', None)
    """
    import typing

    if isinstance(t, type) and issubclass(t, jaxtyping.AbstractArray) and hasattr(t, "dims"):
        return ArraySpec(t)
    args = typing.get_args(t)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return array_spec(rest[0])
    return None


# ---------------------------------------------------------------- extraction
class _Sig:
    """Annotation-derived shape information of one op."""

    def __init__(self, op: Any, params: list[tuple[int, str, ArraySpec]], ints: dict[str, int],
                 returns: list[ArraySpec] | None, returns_tuple: bool) -> None:
        self.op_name = op.name
        self.params = params  # (index in schema order, name, spec)
        self.ints = ints  # int parameter name -> index
        self.returns = returns
        self.returns_tuple = returns_tuple
        self.array_idx = [i for i, p in enumerate(op.binder.params) if p.is_array]


def _signature(op: Any, fn: Callable[..., Any]) -> _Sig | None:
    import typing

    from jaxops.inference import AnnotationResolver

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    resolve = AnnotationResolver(fn)

    def res(a: Any) -> Any:
        try:
            return resolve(a)
        except Exception:  # noqa: BLE001 - unresolvable annotations carry no shapes
            return None

    by_name = {p.name: p.index for p in op.binder.params}
    params: list[tuple[int, str, ArraySpec]] = []
    ints: dict[str, int] = {}
    for name, p in sig.parameters.items():
        if name not in by_name or p.annotation is inspect.Parameter.empty:
            continue
        t = res(p.annotation)
        spec = array_spec(t)
        if spec is not None:
            params.append((by_name[name], name, spec))
        elif t is int:
            ints[name] = by_name[name]
    returns: list[ArraySpec] | None = None
    returns_tuple = False
    ret = sig.return_annotation
    if ret is not inspect.Signature.empty:
        t = res(ret)
        spec = array_spec(t)
        if spec is not None:
            returns = [spec]
        elif typing.get_origin(t) is tuple:
            specs = [array_spec(res(a)) for a in typing.get_args(t)]
            if specs and all(s is not None for s in specs):
                returns = specs  # type: ignore[assignment]
                returns_tuple = True
    if not params and returns is None:
        return None
    return _Sig(op, params, ints, returns, returns_tuple)


# ------------------------------------------------------------------ binding
def _eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - inconclusive symbolic comparison: accept
        return True


def _is_one(a: Any) -> bool:
    return type(a) is int and a == 1


def _fmt(v: Any) -> str:
    return str(tuple(v)) if isinstance(v, tuple) else str(v)


class _Env:
    """Dimension bindings of one call: name -> (value, parameter that bound it)."""

    __slots__ = ("dims", "var", "anon")

    def __init__(self) -> None:
        self.dims: dict[str, tuple[Any, str]] = {}
        self.var: dict[str, tuple[tuple[Any, ...], str]] = {}
        self.anon: list[tuple[Any, ...]] = []


def _bind_one(sig: _Sig, name: str, spec: ArraySpec, shape: tuple[Any, ...], env: _Env,
              deferred: list[Any]) -> None:
    op = sig.op_name
    rank = len(shape)
    if (spec.variadic and rank < spec.min_rank) or (not spec.variadic and rank != spec.min_rank):
        need = f"at least {spec.min_rank}" if spec.variadic else str(spec.min_rank)
        raise TypeError(
            f"{op}: parameter '{name}' has rank {rank} (shape {_fmt(shape)}) but its annotation "
            f"{spec.text!r} expects rank {need}"
        )
    pos = 0
    for kind, payload, bcast in spec.dims:
        if kind in ("var", "anonvar"):
            n = rank - spec.min_rank
            sub = tuple(shape[pos:pos + n])
            pos += n
            if kind == "anonvar":
                env.anon.append(sub)
                continue
            prev = env.var.get(payload)
            if prev is None:
                env.var[payload] = (sub, name)
                continue
            ok = len(prev[0]) == len(sub) and all(
                _eq(a, b) or (bcast and (_is_one(a) or _is_one(b))) for a, b in zip(prev[0], sub)
            )
            if not ok:
                raise TypeError(
                    f"{op}: parameter '{name}' dimensions '*{payload}' are {_fmt(sub)} but were bound "
                    f"to {_fmt(prev[0])} by parameter '{prev[1]}'"
                )
            if bcast:
                merged = tuple(b if _is_one(a) else a for a, b in zip(prev[0], sub))
                env.var[payload] = (merged, prev[1])
            continue
        d = shape[pos]
        if kind == "fixed":
            if not _eq(d, payload) and not (bcast and _is_one(d)):
                raise TypeError(
                    f"{op}: parameter '{name}' dimension {pos} is {d} but its annotation "
                    f"{spec.text!r} fixes it to {payload}"
                )
        elif kind == "named":
            prev2 = env.dims.get(payload)
            if prev2 is None:
                env.dims[payload] = (d, name)
            elif not _eq(prev2[0], d):
                if bcast and _is_one(d):
                    pass
                elif bcast and _is_one(prev2[0]):
                    env.dims[payload] = (d, name)
                else:
                    raise TypeError(
                        f"{op}: parameter '{name}' dimension '{payload}' is {d} but was bound to "
                        f"{prev2[0]} by parameter '{prev2[1]}'"
                    )
        elif kind == "sym":
            deferred.append((name, pos, payload, d, bcast))
        pos += 1


def _bind(sig: _Sig, values: list[Any]) -> _Env:
    env = _Env()
    deferred: list[Any] = []
    for idx, name, spec in sig.params:
        v = values[idx]
        if v is None or not hasattr(v, "shape"):
            continue
        _bind_one(sig, name, spec, tuple(v.shape), env, deferred)
    if deferred:
        scope = {k: v for k, (v, _) in env.dims.items()}
        for name, _pos, (code, text), d, bcast in deferred:
            try:
                want = eval(code, {"__builtins__": {}}, scope)  # noqa: S307 - the annotation's own expression
            except Exception:  # noqa: BLE001 - names not bound at this call: nothing to check
                continue
            if not _eq(d, want) and not (bcast and _is_one(d)):
                raise TypeError(
                    f"{sig.op_name}: parameter '{name}' dimension '{text}' is {d} but the annotation "
                    f"requires {text} = {want}"
                )
    return env


# ------------------------------------------------------------------- fakes
def _default_dtype(allowed: frozenset[str]) -> Any:
    canon = jax.dtypes.canonicalize_dtype
    for cand in (np.float64, np.int64, np.uint64, np.complex128, np.bool_):
        d = np.dtype(canon(cand))
        if d.name in allowed:
            return d
    for name in sorted(allowed):
        try:
            return jnp.dtype(name)
        except TypeError:
            continue
    return np.dtype(canon(np.float64))


def _out_dtype(allowed: frozenset[str] | None, in_dtypes: list[Any]) -> Any:
    if allowed is None:
        return jnp.result_type(*in_dtypes) if in_dtypes else np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
    matching = [d for d in in_dtypes if np.dtype(d).name in allowed]
    if matching:
        r = np.dtype(jnp.result_type(*matching))
        if r.name in allowed:
            return r
    return _default_dtype(allowed)


def _derivable(sig: _Sig) -> bool:
    """Whether every return dimension can be computed from the parameters."""
    if sig.returns is None:
        return False
    named = set(sig.ints)
    var = set()
    anon = False
    for _, _, spec in sig.params:
        for kind, payload, _ in spec.dims:
            if kind == "named":
                named.add(payload)
            elif kind == "var":
                var.add(payload)
            elif kind == "anonvar":
                anon = True
    for spec in sig.returns:
        for kind, payload, _ in spec.dims:
            if kind == "anon":
                return False
            if kind == "named" and payload not in named:
                return False
            if kind == "var" and payload not in var:
                return False
            if kind == "anonvar" and not anon:
                return False
            if kind == "sym" and not set(payload[0].co_names) <= named:
                return False
    return True


def _out_shape(sig: _Sig, spec: ArraySpec, env: _Env, values: list[Any]) -> tuple[Any, ...]:
    shape: list[Any] = []
    scope: dict[str, Any] | None = None
    for kind, payload, _ in spec.dims:
        if kind == "fixed":
            shape.append(payload)
        elif kind == "named":
            if payload in env.dims:
                shape.append(env.dims[payload][0])
            else:
                shape.append(int(values[sig.ints[payload]]))
        elif kind == "var":
            shape.extend(env.var[payload][0])
        elif kind == "anonvar":
            shape.extend(jnp.broadcast_shapes(*env.anon) if env.anon else ())
        elif kind == "sym":
            if scope is None:
                scope = {k: int(values[i]) for k, i in sig.ints.items()}
                scope.update({k: v for k, (v, _) in env.dims.items()})
            shape.append(eval(payload[0], {"__builtins__": {}}, scope))  # noqa: S307
    return tuple(shape)


def derive_fake(op: Any, fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """A fake derived from ``fn``'s jaxtyping shape annotations, or None if they carry none.

    The fake takes the op's arguments (abstract arrays) and returns
    ``jax.ShapeDtypeStruct`` s; it also checks the shapes (``TypeError``).

    >>> # op.definition.derived_fake(jax.ShapeDtypeStruct((2, 3), "float32"), ...)
    """
    sig = _signature(op, fn)
    if sig is None or not _derivable(sig):
        return None
    binder = op.binder
    n_pos = binder.n_positional
    kw_names = [p.name for p in binder.params[n_pos:]]
    returns = sig.returns
    assert returns is not None

    def fake(*args: Any, **kwargs: Any) -> Any:
        values = list(args) + [kwargs[k] for k in kw_names]
        env = _bind(sig, values)
        in_dtypes = [
            leaf.dtype
            for i in sig.array_idx
            for leaf in jax.tree_util.tree_leaves(values[i])
            if hasattr(leaf, "dtype")
        ]
        outs = [
            jax.ShapeDtypeStruct(_out_shape(sig, spec, env, values), _out_dtype(spec.dtypes, in_dtypes))
            for spec in returns
        ]
        return tuple(outs) if sig.returns_tuple else outs[0]

    fake.__name__ = f"derived_fake[{op.name}]"
    fake.__qualname__ = fake.__name__
    return fake


def shape_checker(op: Any, fn: Callable[..., Any]) -> Callable[[list[Any]], None] | None:
    """A ``check(values)`` raising ``TypeError`` on inconsistent shapes, or None.

    ``values`` are the op's arguments in schema order.  None when no parameter
    annotation constrains a shape.

    >>> # check = shape_checker(op, fn); check([a, b])  # TypeError naming op, parameter, dimension
    """
    sig = _signature(op, fn)
    if sig is None or not any(spec.constrains for _, _, spec in sig.params):
        return None

    def check(values: list[Any]) -> None:
        _bind(sig, values)

    return check
