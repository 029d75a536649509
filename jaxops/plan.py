"""Shape-only planning of a whole function: :func:`plan` and :class:`Plan`.

``jaxops.plan(fn, *args, **kwargs)`` traces ``fn`` once on abstract inputs
(``jax.ShapeDtypeStruct`` s, arrays, pytrees of them; symbolic shapes from
``jax.export.symbolic_shape`` work) and walks the resulting jaxpr.  Nothing is
lowered, compiled or run.  Every call of a registered op is a nested ``jit``
named after the op, so each such equation becomes one record:

>>> import jax, jax.numpy as jnp, jaxops
>>> @jaxops.custom_op("plandoc::mm", mutates_args=())
... def mm(a: jax.Array, b: jax.Array) -> jax.Array:
...     return a @ b
>>> b, = jax.export.symbolic_shape("b")
>>> p = jaxops.plan(lambda x, w: mm(x, w), jax.ShapeDtypeStruct((b, 4), jnp.float32),
...                 jax.ShapeDtypeStruct((4, 3), jnp.float32))
>>> p.records[0]["op"], str(p.records[0]["flops"])
('plandoc::mm', '24*b')

Choices documented here:

* **Plain JAX primitives outside ops** are not records (``records`` holds op
  calls only).  They are aggregated per primitive kind in
  :attr:`Plan.jax_primitives` and per run of one scope and phase in
  :attr:`Plan.jax_groups`, shown as one ``(jax: N primitives)`` line per run
  (so an Equinox ``MLP`` shows a line per layer;
  ``plan.table(jax="per-primitive")`` lists one line per kind instead).
  Totals include them.
* **Scope and phase**: every record has ``"scope"``, the ``jax.named_scope``
  path it ran under (Equinox modules open ``eqx.nn.Linear`` and the like),
  ``""`` at top level, read from the jaxpr equations' name stacks (nested
  jits, ``scan`` bodies and op bodies are relative to their call, so scopes
  compose), and ``"phase"``: ``"backward"`` when the name stack has a
  ``transpose`` entry (the transposed half of ``grad``/``vjp``), else
  ``"forward"``.  :meth:`Plan.by_scope` groups records by scope.
* **Peak memory**: :attr:`Plan.peak_bytes` is a program-order liveness
  estimate (see there); :meth:`Plan.memory_timeline` gives live bytes per
  top-level step.  Checked against XLA's ``memory_analysis()`` (argument +
  output + temp bytes) on the CPU within 25 % for an MLP forward and grad;
  it models no fusion, so chains of elementwise ops count more than XLA keeps.
* **Fakes of traceable ops**: an op with a registered fake
  (``register_fake``) is planned through the fake, not its body (cheaper, and
  an op whose body is a placeholder raising ``NotImplementedError`` plans
  like under PyTorch's ``FakeTensorMode``); its FLOPs are then ``None``
  unless :func:`register_cost` gives them, and its record has ``"fake"``
  True.  Under ``grad`` an op without a registered backward is still traced
  through its body (JAX differentiates the body).  Mutating ops
  always trace their body.  ``jax.eval_shape`` cannot be told apart from
  ``jit`` inside an op, so it keeps tracing the body: only ``plan`` uses the
  fake (``opcheck``'s ``test_faketensor`` compares the two).
* **Shapes** must have non-negative int or symbolic dims: anything else
  raises ``ValueError`` naming the argument.
* **FLOPs**: a cost function registered with :func:`register_cost` wins;
  otherwise the primitives inside the op's jaxpr are counted: ``dot_general``
  is ``2 * out_size * contracted_size``, convolutions ``2 * out_size *
  in_features_per_group * kernel_size``, reductions the input size, pure data
  movement (reshape, transpose, broadcast, slicing, ...) zero, any other
  primitive (elementwise) its output size.  A host op (``pure_callback``) or a
  ``while`` loop inside an op makes its FLOPs ``None`` (unknown).
* **Bytes** of a record are its input plus output bytes.
* **Control flow**: op calls inside ``lax.scan`` get ``"calls"`` = the trip
  count (records are per call site; totals multiply); inside ``while_loop``
  ``"calls"`` is ``None`` and totals count them once; every ``cond`` branch is
  listed, so totals are an upper bound.
* **Under** ``jax.grad`` the forward and the backward (transposed) copies of
  each op are separate records, in program order.
* **Ops inside ops** are records too, with ``"depth"`` > 0; totals count only
  depth-0 records (an outer op's FLOPs already include its inner ops).
* ``totals["parameters"]``: when ``fn`` takes two or more positional arguments,
  the element count of the array leaves of the first one (JAX's
  ``loss(params, *data)`` convention); otherwise ``None``.
  ``totals["activation_bytes"]``: bytes of every intermediate value produced
  (op outputs and primitive outputs at top level), an upper bound that ignores
  buffer reuse.

Planning the same function object with the same abstract signature, static
arguments and op registrations is cached: no retrace.
"""


from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxops import hooks as _hooks
from jaxops import plan_memory as _plan_memory
from jaxops import plan_table as _plan_table
from jaxops import plan_walk as _plan_walk
from jaxops import registry as _registry
from jaxops.plan_costs import COST_GEN, COSTS, register_cost
from jaxops.plan_fake import trace_through_fake
from jaxops.plan_memory import max_value

__all__ = ["Plan", "plan", "register_cost", "is_planning"]

# Names this module had before its split into the plan_* modules (tests read them); trace_through_fake
# and register_cost above stay importable from here too.
_COSTS = COSTS
_COST_GEN = COST_GEN
_max_value = max_value

#: Depth of active :func:`plan` traces (read by :func:`is_planning`).
_PLANNING = [0]


def is_planning() -> bool:
    """True while :func:`plan` is tracing (fakes may consult it).

    >>> is_planning()
    False
    """
    return _PLANNING[0] > 0


class Plan:
    """The result of :func:`plan`: op-call records, primitive aggregates and totals.

    Iterating yields the records (dicts); ``str(plan)`` is an aligned table
    ending in a ``total`` line; ``_repr_html_`` renders it in notebooks;
    :meth:`summary` adds parameters and activation bytes.  Every record has a
    ``"scope"`` (``jax.named_scope`` / Equinox module path, ``""`` at top
    level) and a ``"phase"`` (``"forward"`` or ``"backward"``);
    :meth:`by_scope` groups records by scope; :attr:`peak_bytes` is a
    liveness estimate of peak memory and :meth:`memory_timeline` the live
    bytes per step.

    >>> import jax, jax.numpy as jnp, jaxops
    >>> def f(x):
    ...     with jax.named_scope("layer"):
    ...         return jnp.sin(x) * 2
    >>> p = jaxops.plan(f, jax.ShapeDtypeStruct((8,), jnp.float32))
    >>> [(g["scope"], g["phase"], g["count"]) for g in p.jax_groups]
    [('layer', 'forward', 2)]
    >>> p.peak_bytes  # x, sin(x), sin(x) * 2
    96
    """

    def __init__(
        self,
        records: list[dict[str, Any]],
        jax_primitives: dict[str, dict[str, Any]],
        totals: dict[str, Any],
        outputs: Any,
        jax_groups: list[dict[str, Any]] | None = None,
        jaxpr: Any = None,
    ) -> None:
        self.records = records
        self.jax_primitives = jax_primitives
        self.totals = totals
        #: The function's outputs as a pytree of ``jax.ShapeDtypeStruct``.
        self.outputs = outputs
        #: Plain JAX primitives outside ops, one dict per run of one scope and phase
        #: (program order): ``op`` = ``"(jax)"``, ``scope``, ``phase``, ``count``,
        #: ``primitives`` (kind -> count), ``flops``, ``bytes``, ``output_bytes``.
        self.jax_groups = list(jax_groups or [])
        self._jaxpr = jaxpr
        self._memory: tuple[Any, list[dict[str, Any]]] | None = None
        self._peak: Any = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]

    def __repr__(self) -> str:
        return (
            f"<jaxops.Plan {len(self.records)} op calls, flops={self.totals['flops']}, "
            f"bytes={self.totals['bytes']}>"
        )

    def by_scope(self, *, jax: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Records by scope (``""``: top level), scopes in order of first appearance.

        With ``jax=True`` the lists also hold the :attr:`jax_groups` of each
        scope (after its op records), so a model without custom ops still
        shows per-layer FLOPs and bytes.

        >>> # {scope: sum(r["flops"] for r in rs) for scope, rs in plan.by_scope(jax=True).items()}
        """
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.records:
            out.setdefault(r["scope"], []).append(r)
        if jax:
            for g in self.jax_groups:
                out.setdefault(g["scope"], []).append(g)
        return out

    def _program(self) -> Any:
        if self._jaxpr is None:
            raise ValueError("this Plan has no program to analyse (it was built without a jaxpr)")
        return self._jaxpr

    def _memory_profile(self) -> tuple[Any, list[dict[str, Any]]]:
        if self._memory is None:
            self._memory = _plan_memory.memory_profile(self._program(), {r["op"] for r in self.records})
        return self._memory

    @property
    def peak_bytes(self) -> Any:
        """Peak bytes of live buffers over the program (a liveness estimate; symbolic with symbolic shapes).

        The arguments stay live throughout (the caller owns them); every
        top-level equation's outputs are allocated at its step while its
        inputs are live, plus the temporaries of programs nested in it (op
        bodies, ``scan`` bodies, ``cond`` branches: their own peak); a value is
        freed after its last use; outputs stay live.  A ``grad`` plan covers
        forward and backward.  No fusion and no in-place reuse are assumed,
        so on XLA (which fuses elementwise chains) it is an upper-side
        estimate; ops planned through a fake count their outputs only.
        With symbolic shapes it is a ``max(...)`` of the step peaks JAX cannot
        order; beyond 8 of those (typical of ``grad``) it is an upper bound:
        per monomial, the largest coefficient among them.

        >>> import jax, jax.numpy as jnp, jaxops
        >>> jaxops.plan(lambda x: x * 2 + 1, jax.ShapeDtypeStruct((4,), jnp.float32)).peak_bytes
        48
        """
        if self._peak is None:
            if self._memory is not None:
                self._peak = self._memory[0]
            else:
                self._peak = _plan_memory.peak_bytes(self._program())
        return self._peak

    def memory_timeline(self) -> list[dict[str, Any]]:
        """Live bytes per top-level step: dicts with ``step``, ``primitive`` (or op name), ``scope``, ``phase``, ``live_bytes``.

        ``max(t["live_bytes"] for t in timeline) == plan.peak_bytes`` (concrete shapes).

        >>> import jax, jax.numpy as jnp, jaxops
        >>> tl = jaxops.plan(lambda x: x * 2 + 1, jax.ShapeDtypeStruct((4,), jnp.float32)).memory_timeline()
        >>> [(t["primitive"], t["live_bytes"]) for t in tl]
        [('mul', 32), ('add', 48)]
        """
        return [dict(t) for t in self._memory_profile()[1]]

    def rows(self, jax: str = "line") -> list[list[str]]:
        """Table rows (header first, ``total`` last) as strings.

        ``jax`` is ``"line"`` (one ``(jax)`` row per run of primitives of one
        scope and phase, see :attr:`jax_groups`), ``"per-primitive"`` (one
        row per primitive kind) or ``"none"``.  The last two columns are the
        phase and the scope.
        """
        return _plan_table.rows(self, jax)

    def table(self, jax: str = "line") -> str:
        """The aligned text table (see :meth:`rows`)."""
        return _plan_table.text(self.rows(jax))

    def summary(self) -> str:
        """One line: parameters, activation bytes, peak bytes, records with unknown FLOPs."""
        t = self.totals
        extra = []
        if t.get("parameters") is not None:
            extra.append(f"parameters {_plan_table.fmt_num(t['parameters'])}")
        extra.append(f"activation_bytes {_plan_table.fmt_num(t['activation_bytes'])}")
        if self._jaxpr is not None:
            extra.append(f"peak_bytes {_plan_table.fmt_num(self.peak_bytes)}")
        if t["unknown_flops"]:
            extra.append(f"{t['unknown_flops']} record(s) with unknown flops")
        return "; ".join(extra)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        return _plan_table.html_table(self)


# ----------------------------------------------------------------------- plan
def _is_array_leaf(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic)) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)
    )


def _leaf_key(x: Any) -> Any:
    return (tuple(x.shape), str(x.dtype))


_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Plan]] = weakref.WeakKeyDictionary()
_STRONG_CACHE: dict[Any, dict[Any, Plan]] = {}


def _fn_cache(fn: Any) -> dict[Any, Plan] | None:
    try:
        return _CACHE.setdefault(fn, {})
    except TypeError:
        try:
            hash(fn)
        except TypeError:
            return None
        if len(_STRONG_CACHE) > 256:
            _STRONG_CACHE.clear()
        return _STRONG_CACHE.setdefault(fn, {})


def _still_valid(p: Plan) -> bool:
    for name, op in p._ops.items():  # type: ignore[attr-defined]
        q, _, ov = name.partition(".") if "." in name.split("::", 1)[-1] else (name, "", "")
        entry = _registry.get(q)
        if entry is None or entry.get(ov) is not op:
            return False
    return True


def _arg_label(fn: Any, path: tuple[Any, ...]) -> str:
    """``x``, ``params['w1']`` or ``args[0]`` for a leaf path into ``(args, kwargs)``."""
    where, key, rest = path[0], path[1], path[2:]
    tail = jax.tree_util.keystr(tuple(rest))
    if getattr(where, "idx", None) == 1:  # kwargs
        return f"{getattr(key, 'key', key)}{tail}"
    i = getattr(key, "idx", 0)
    schema = getattr(fn, "function_schema", None)  # an op: its schema names the parameters
    if schema is not None:
        params = [a.name for a in schema.arguments if not a.kwarg_only]
    else:
        try:
            params = [
                p.name for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            params = []
    return f"{params[i]}{tail}" if i < len(params) else f"args[{i}]{tail}"


def _check_dims(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise ValueError naming the argument when an array leaf has a negative or non-integer dim."""
    for path, v in jax.tree_util.tree_flatten_with_path((args, kwargs))[0]:
        if not _is_array_leaf(v):
            continue
        for d in tuple(v.shape):
            if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0:
                continue
            if jax.export.is_symbolic_dim(d):
                continue
            what = f"jaxops.plan({fn.name})" if isinstance(getattr(fn, "name", None), str) and "::" in fn.name else "jaxops.plan"
            raise ValueError(
                f"{what}: argument {_arg_label(fn, path)} has an invalid shape {tuple(v.shape)}: "
                f"dimension {d!r} is not a non-negative int or a symbolic dimension"
            )


def plan(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Plan:
    """Shape-only run of ``fn(*args, **kwargs)``: one record per op call, plus totals.

    Array leaves of ``args``/``kwargs`` (``jax.Array``, ``np.ndarray``,
    ``jax.ShapeDtypeStruct``, symbolic shapes included) are abstract; every
    other leaf is a static Python value.  Nothing is compiled or run.
    Dimensions must be non-negative ints or symbolic: a negative one raises
    ``ValueError`` naming the argument.

    A traceable op with a registered fake is planned through the fake, not
    its body (its FLOPs are ``None`` unless :func:`register_cost` gives
    them), except under ``grad`` without a registered backward, where the
    body is differentiated.  ``jax.eval_shape`` keeps tracing bodies: inside
    an op it cannot be told apart from ``jit``.  Records carry ``"scope"``
    and ``"phase"``; :attr:`Plan.peak_bytes` estimates peak memory.

    >>> import jax, jax.numpy as jnp, jaxops
    >>> p = jaxops.plan(lambda x: jnp.sin(x) * 2, jax.ShapeDtypeStruct((8,), jnp.float32))
    >>> p.totals["flops"], p.records
    (16, [])
    """
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    is_arr = [_is_array_leaf(v) for v in leaves]
    abstract = [jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) if a and not isinstance(v, jax.ShapeDtypeStruct) else v
                for v, a in zip(leaves, is_arr)]
    key: Any = None
    cache = _fn_cache(fn)
    if cache is not None:
        try:
            key = (
                treedef,
                tuple(_leaf_key(v) if a else ("static", type(v), v) for v, a in zip(abstract, is_arr)),
                _registry.registrations(),  # any registration may change a plan
            )
            hit = cache.get(key)
        except TypeError:
            key, hit = None, None
        if hit is not None and _still_valid(hit):
            return hit
    arr_pos = [i for i, a in enumerate(is_arr) if a]
    arr_in = [abstract[i] for i in arr_pos]

    def flat(*arrs: Any) -> Any:
        vals = list(leaves)
        for i, a in zip(arr_pos, arrs):
            vals[i] = a
        a, k = jax.tree_util.tree_unflatten(treedef, vals)
        return fn(*a, **k)

    _check_dims(fn, args, kwargs)
    ops = {op.name: op for op in _registry.all_ops()}
    _PLANNING[0] += 1
    if _PLANNING[0] == 1:  # op traces made while planning differ (fakes stand in for bodies)
        _registry.set_mode("planning", True)
        _hooks.set_fake_tracer(trace_through_fake)
    try:
        traced = jax.jit(flat).trace(*arr_in)
    finally:
        _PLANNING[0] -= 1
        if _PLANNING[0] == 0:
            _hooks.set_fake_tracer(None)
            _registry.set_mode("planning", None)
    closed = traced.jaxpr
    ctx = _plan_walk.Ctx(ops)
    _plan_walk.walk(closed.jaxpr, ctx, 1, 1, top=True)
    params = None
    if len(args) >= 2:
        first = [v for v in jax.tree_util.tree_leaves(args[0]) if _is_array_leaf(v)]
        params = sum((math.prod(tuple(v.shape)) for v in first), 0)
    out_avals = list(closed.out_avals)
    totals = _plan_walk.totals(ctx, [a for a in closed.in_avals], out_avals, params)
    outputs = jax.tree_util.tree_map(
        lambda v: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype), traced.out_info
    )
    prims = {k: v.as_dict() for k, v in ctx.prims.items()}
    groups = [g.as_dict() for g in ctx.groups]
    result = Plan(ctx.records, prims, totals, outputs, groups, closed.jaxpr)
    result._ops = dict(ctx.used)  # type: ignore[attr-defined]
    if cache is not None and key is not None:
        if len(cache) > 64:
            cache.clear()
        cache[key] = result
    return result


plan.register_cost = register_cost  # type: ignore[attr-defined]
