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

import html
import inspect
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, DropVar, Jaxpr, Literal

from jaxops import hooks as _hooks
from jaxops import registry as _registry

__all__ = ["Plan", "plan", "register_cost", "is_planning"]

#: Cost functions by op name: ``fn(inputs, outputs) -> flops`` (lists of ShapeDtypeStruct).
_COSTS: dict[str, Callable[[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]], Any]] = {}
_COST_GEN = [0]

#: Depth of active :func:`plan` traces (read by :func:`is_planning`).
_PLANNING = [0]

_ZERO_FLOP = frozenset(
    {
        "reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "slice",
        "dynamic_slice", "dynamic_update_slice", "gather", "concatenate", "pad", "rev",
        "iota", "copy", "copy_p", "convert_element_type", "bitcast_convert_type",
        "device_put", "stop_gradient", "sharding_constraint", "split", "optimization_barrier",
        "squeeze_p", "select_and_gather_add", "zeros_like", "full_like", "empty",
    }
)
_REDUCTIONS = frozenset(
    {
        "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
        "reduce_xor", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin",
        "cumlogsumexp", "reduce_precision", "sort", "top_k",
    }
)
_UNKNOWN = frozenset({"pure_callback", "io_callback", "callback", "host_callback", "jaxops_data_dependent"})
_JIT_NAMES = frozenset({"jit", "pjit"})


def register_cost(
    op_or_name: Any,
    fn: Callable[[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]], Any] | None = None,
) -> Any:
    """Register a FLOP count for an op, used by :func:`plan` instead of counting primitives.

    ``fn(inputs, outputs)`` gets the call's array inputs and outputs as lists of
    ``jax.ShapeDtypeStruct`` and returns an int (or a symbolic expression).
    Works as a decorator too.

    >>> import jaxops
    >>> # @jaxops.plan.register_cost("mylib::matmul")
    >>> # def _(inputs, outputs):
    >>> #     (m, k), (_, n) = inputs[0].shape, inputs[1].shape
    >>> #     return 2 * m * k * n
    """
    name = op_or_name if isinstance(op_or_name, str) else _registry.as_op(op_or_name).name

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError(f"{name}: register_cost needs a callable, got {type(f).__name__}")
        _COSTS[name] = f
        _COST_GEN[0] += 1
        return f

    return inner if fn is None else inner(fn)


def is_planning() -> bool:
    """True while :func:`plan` is tracing (fakes may consult it).

    >>> is_planning()
    False
    """
    return _PLANNING[0] > 0


# ------------------------------------------------------------ fakes for bodies
class _Placeholder:
    """The ``pure_callback`` target that stands in for a traceable op's body under :func:`plan`.

    Plans are never compiled nor run, so it is not called; if it were, it would
    run the body eagerly and give the right result.
    """

    __slots__ = ("op_name", "body")

    def __init__(self, op_name: str, body: Callable[..., Any]) -> None:
        self.op_name = op_name
        self.body = body

    def __call__(self, *arrays: Any) -> Any:
        out = self.body(*arrays)
        return jax.tree_util.tree_map(np.asarray, out)

    def __repr__(self) -> str:
        return f"<jaxops.plan fake of {self.op_name}>"


def trace_through_fake(defn: Any, kernel: Any, values: list[Any], operands: tuple[Any, ...],
                       body: Callable[..., Any]) -> Any:
    """Under :func:`plan`: the outputs of a traceable op's call, from its registered fake.

    Installed as the core's fake tracer (``jaxops.hooks.set_fake_tracer``) while
    :func:`plan` traces, so the op's traced kernel dispatch calls it for an op
    with a registered fake.  ``operands`` are the call's array leaves,
    ``body(*operands)`` runs the kernel.  The fake's shapes come out of a
    ``pure_callback`` (never run: plans are not compiled), so the body is not
    traced and its FLOPs are unknown unless :func:`register_cost` gives them.
    The body is traced only when the call is differentiated without a
    registered backward (``jax.grad`` needs the body's derivative: a
    ``custom_jvp`` whose rule is the body's JVP).  A fake that asks for dynamic
    sizes gives the data-dependent primitive of :mod:`jaxops.dynamic` instead.

    >>> # jaxops.kernels: return hooks.FAKE_TRACER[0](defn, kernel, vals, leaves, run_body)
    """
    from jaxops import dynamic as _dyn
    from jaxops import fake as _fake

    op = defn
    out_shapes, dynamic = _fake.abstract_eval(defn, values)
    if dynamic:
        return _dyn.data_dependent_call(defn, kernel, values, out_shapes)
    placeholder = _Placeholder(op.name, body)

    def primal(*xs: Any) -> Any:
        out = jax.pure_callback(placeholder, out_shapes, *xs, vmap_method="broadcast_all")
        return op.check_outputs(out)

    def jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
        try:
            return jax.jvp(body, primals, tangents)
        except NotImplementedError as e:
            e.add_note(
                f"{op.name}: jaxops.plan of a derivative traces the op's body (its fake gives no "
                f"derivative); register a backward with register_autograd to plan it without the body"
            )
            raise

    f = jax.custom_jvp(primal)
    f.defjvp(jvp)
    return f(*operands)


def _is_placeholder(eqn: Any) -> bool:
    """True for the ``pure_callback`` of :func:`trace_through_fake`."""
    call = eqn.params.get("call")  # jaxops.dynamic's data-dependent primitive
    if call is not None and eqn.primitive.name == "jaxops_data_dependent":
        return not getattr(getattr(call, "kernel", None), "host", True)
    return isinstance(getattr(eqn.params.get("callback"), "callback_func", None), _Placeholder)


# ---------------------------------------------------------------- small helpers
class _Info:
    """Cached facts about one abstract value: its ShapeDtypeStruct, element count, bytes."""

    __slots__ = ("sds", "size", "nbytes")

    def __init__(self, aval: Any) -> None:
        shape = tuple(getattr(aval, "shape", ()))
        dtype = getattr(aval, "dtype", None)
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = getattr(dtype, "itemsize", 0) or 0
        self.sds = jax.ShapeDtypeStruct(shape, dtype)
        self.size = math.prod(shape)
        self.nbytes = self.size * itemsize


_AVAL_CACHE: dict[Any, _Info] = {}


def _info(aval: Any) -> _Info:
    """:class:`_Info` of an abstract value (cached per aval)."""
    try:
        return _AVAL_CACHE[aval]
    except KeyError:
        pass
    except TypeError:
        return _Info(aval)
    info = _AVAL_CACHE[aval] = _Info(aval)
    if len(_AVAL_CACHE) > 50_000:
        _AVAL_CACHE.clear()
    return info


class _Acc:
    """A sum of ints and symbolic expressions, cheap to add to.

    Symbolic dimension arithmetic costs tens of microseconds per operation, so
    symbolic terms are counted per distinct object and multiplied out once in
    :meth:`value`.  Adding ``None`` marks the sum as partly unknown (``value``
    then gives the sum of the known terms; ``unknown`` counts the others).
    """

    __slots__ = ("i", "terms", "unknown")

    def __init__(self) -> None:
        self.i = 0
        self.terms: dict[int, list[Any]] = {}
        self.unknown = 0

    def add(self, v: Any, n: int = 1) -> None:
        if type(v) is int:
            self.i += v * n
        elif v is None:
            self.unknown += 1
        elif isinstance(v, _Acc):
            self.i += v.i * n
            self.unknown += v.unknown
            for k, (t, c) in v.terms.items():
                self.add_term(k, t, c * n)
        else:
            self.add_term(id(v), v, n)

    def add_term(self, k: int, t: Any, n: int) -> None:
        cur = self.terms.get(k)
        if cur is None:
            self.terms[k] = [t, n]
        else:
            cur[1] += n

    def value(self) -> Any:
        out: Any = self.i
        for t, c in self.terms.values():
            out = out + (t if c == 1 else t * c)
        return out


def _sub_jaxprs(eqn: Any) -> list[tuple[Any, Any]]:
    """``(jaxpr, multiplier)`` of every jaxpr nested in an equation's params."""
    name = eqn.primitive.name
    out: list[tuple[Any, Any]] = []
    mult: Any = 1
    if name == "scan":
        mult = eqn.params.get("length", 1)
    elif name == "while":
        mult = None
    for v in eqn.params.values():
        if isinstance(v, (tuple, list)):
            for w in v:
                j = _as_jaxpr(w)
                if j is not None:
                    out.append((j, mult))
        else:
            j = _as_jaxpr(v)
            if j is not None:
                out.append((j, mult))
    return out


def _as_jaxpr(v: Any) -> Any:
    if isinstance(v, ClosedJaxpr):
        return v.jaxpr
    if isinstance(v, Jaxpr):
        return v
    return None


def _prim_flops(eqn: Any) -> Any:
    """FLOPs of one primitive equation without nested jaxprs (None when unknown)."""
    name = eqn.primitive.name
    if name in _ZERO_FLOP:
        return 0
    if name in _UNKNOWN:
        return None
    outs = eqn.outvars
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        contracted = math.prod(lhs[d] for d in lc)
        return 2 * _info(outs[0].aval).size * contracted
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        rhs_spec = getattr(dn, "rhs_spec", None)
        if rhs_spec is None:
            kernel = math.prod(rhs[1:])
        else:
            kernel = math.prod(rhs[d] for d in rhs_spec[1:])
        return 2 * _info(outs[0].aval).size * kernel
    vs = eqn.invars if name in _REDUCTIONS else outs
    if len(vs) == 1:
        return _info(vs[0].aval).size
    acc = _Acc()
    for v in vs:
        acc.add(_info(v.aval).size)
    return acc.value()


class _PrimAgg:
    """Aggregate of one primitive kind outside ops."""

    __slots__ = ("count", "flops", "bytes", "output_bytes")

    def __init__(self) -> None:
        self.count = 0
        self.flops = _Acc()
        self.bytes = _Acc()
        self.output_bytes = _Acc()

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "flops": self.flops.value(),
            "bytes": self.bytes.value(),
            "output_bytes": self.output_bytes.value(),
        }


class _Group(_PrimAgg):
    """Primitives outside ops that ran in a row under one scope and phase (one table line)."""

    __slots__ = ("scope", "back", "kinds")

    def __init__(self, scope: str, back: bool) -> None:
        super().__init__()
        self.scope = scope
        self.back = back
        self.kinds: dict[str, int] = {}

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d.update(op="(jax)", scope=self.scope, phase=_phase(self.back), primitives=dict(self.kinds))
        return d


class _Ctx:
    """State of one walk: op table, records, primitive aggregates and groups."""

    __slots__ = ("ops", "records", "prims", "groups", "used", "fake")

    def __init__(self, ops: dict[str, Any]) -> None:
        self.ops = ops
        self.records: list[dict[str, Any]] = []
        self.prims: dict[str, _PrimAgg] = {}
        self.groups: list[_Group] = []
        self.used: dict[str, Any] = {}
        self.fake = False  # a plan placeholder (fake standing in for a body) was seen


class _Body:
    """What one op body (an inner jaxpr) contributes; memoized per jaxpr object."""

    __slots__ = (
        "jaxpr", "gen", "used", "flops", "nested", "ins", "outs", "in_bytes", "out_bytes", "total_bytes", "fake",
    )


# id(inner jaxpr) -> _Body (the jaxpr is kept alive by the entry, so ids are not reused)
_BODY_MEMO: dict[int, _Body] = {}


def _body(eqn: Any, jaxpr: Any, ctx: _Ctx) -> _Body:
    """The memoized :class:`_Body` of an op call's inner jaxpr."""
    hit = _BODY_MEMO.get(id(jaxpr))
    if (
        hit is not None
        and hit.jaxpr is jaxpr
        and hit.gen == _COST_GEN[0]
        and all(ctx.ops.get(n) is o for n, o in hit.used.items())
    ):
        return hit
    sub = _Ctx(ctx.ops)
    b = _Body()
    b.jaxpr = jaxpr
    b.gen = _COST_GEN[0]
    flops = _walk(jaxpr, sub, 1, 1, top=False)
    b.flops = flops.value() if not flops.unknown else None
    b.used = sub.used
    b.nested = sub.records
    b.fake = sub.fake
    ins = [_info(v.aval) for v in eqn.invars]
    outs = [_info(v.aval) for v in eqn.outvars]
    b.ins = [i.sds for i in ins]
    b.outs = [o.sds for o in outs]
    acc = _Acc()
    for i in ins:
        acc.add(i.nbytes)
    b.in_bytes = acc.value()
    acc = _Acc()
    for o in outs:
        acc.add(o.nbytes)
    b.out_bytes = acc.value()
    b.total_bytes = b.in_bytes + b.out_bytes
    if len(_BODY_MEMO) > 20_000:
        _BODY_MEMO.clear()
    _BODY_MEMO[id(jaxpr)] = b
    return b


def _stack_info(ns: Any) -> tuple[str, bool]:
    """``(scope, backward)`` of an equation's name stack.

    The scope joins the ``jax.named_scope`` entries (Equinox's module scopes
    included) with ``/``; transformation entries (``jvp(...)``, ``vmap(...)``)
    are left out, and a ``transpose(...)`` entry marks the backward pass.
    """
    try:
        return _SCOPE_MEMO[ns]
    except KeyError:
        pass
    except TypeError:
        return _parse_stack(ns)
    info = _SCOPE_MEMO[ns] = _parse_stack(ns)
    if len(_SCOPE_MEMO) > 50_000:
        _SCOPE_MEMO.clear()
    return info


def _parse_stack(ns: Any) -> tuple[str, bool]:
    parts: list[str] = []
    back = False
    for entry in getattr(ns, "stack", ()):
        name = getattr(entry, "name", "")
        if type(entry).__name__ == "Transform":
            back = back or name == "transpose"
        elif name:
            parts.append(str(name))
    return "/".join(parts), back


_SCOPE_MEMO: dict[Any, tuple[str, bool]] = {}


def _join(outer: str, inner: str) -> str:
    return f"{outer}/{inner}" if outer and inner else (outer or inner)


def _eqn_scope(eqn: Any, prefix: str, back: bool) -> tuple[str, bool]:
    scope, b = _stack_info(eqn.source_info.name_stack)
    return _join(prefix, scope), back or b


def _phase(back: bool) -> str:
    return "backward" if back else "forward"


def _walk(jaxpr: Any, ctx: _Ctx, calls: Any, depth: int, *, top: bool, prefix: str = "", back: bool = False) -> _Acc:
    """Walk ``jaxpr``: append op records to ``ctx``; return its FLOPs.

    ``top`` is True outside any op: primitives there are aggregated into
    ``ctx.prims`` and into ``ctx.groups`` (runs of one scope and phase).
    ``calls`` is how often this jaxpr runs per call of the planned function
    (None: unknown).  ``prefix``/``back`` are the scope and the backward flag
    of the equation this jaxpr is nested in (name stacks of nested jaxprs are
    relative to it).
    """
    flops = _Acc()
    ops = ctx.ops
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim in _JIT_NAMES:
            name = eqn.params.get("name")
            op = ops.get(name) if type(name) is str else None
            if op is not None:
                scope, b = _eqn_scope(eqn, prefix, back)
                flops.add(_op_record(eqn, op, name, ctx, calls, depth, scope, b))
                continue
        subs = _sub_jaxprs(eqn)
        if subs:
            scope, b = _eqn_scope(eqn, prefix, back)
            for j, mult in subs:
                c = None if (calls is None or mult is None) else calls * mult
                f = _walk(j, ctx, c, depth, top=top, prefix=scope, back=b)
                if mult is None:
                    flops.add(None)
                else:
                    flops.add(f, mult)
            continue
        f = _prim_flops(eqn)
        flops.add(f)
        if prim in _UNKNOWN:
            ctx.fake |= _is_placeholder(eqn)
        if top:
            scope, b = _eqn_scope(eqn, prefix, back)
            agg = ctx.prims.get(prim)
            if agg is None:
                agg = ctx.prims[prim] = _PrimAgg()
            groups = ctx.groups
            if groups and groups[-1].scope == scope and groups[-1].back == b:
                group = groups[-1]
            else:
                group = _Group(scope, b)
                groups.append(group)
            n = 1 if calls is None else calls
            out_b, all_b = _Acc(), _Acc()
            for v in eqn.outvars:
                out_b.add(_info(v.aval).nbytes)
            all_b.add(out_b)
            for v in eqn.invars:
                all_b.add(_info(v.aval).nbytes)
            for a in (agg, group):
                a.count += n
                a.flops.add(f, n)
                a.output_bytes.add(out_b, n)
                a.bytes.add(all_b, n)
            group.kinds[prim] = group.kinds.get(prim, 0) + n
    return flops


def _op_record(
    eqn: Any, op: Any, name: str, ctx: _Ctx, calls: Any, depth: int, scope: str, back: bool
) -> Any:
    """Append the record of one op call (and of ops nested in it); return its FLOPs."""
    ctx.used[name] = op
    inner = _as_jaxpr(eqn.params.get("jaxpr"))
    b = _body(eqn, inner, ctx)
    ctx.used.update(b.used)
    cost = _COSTS.get(name) or _COSTS.get(op.qualname)
    if cost is not None:
        try:
            flops = cost(list(b.ins), list(b.outs))
        except Exception as e:  # noqa: BLE001 - a broken cost function must name the op
            raise RuntimeError(f"{name}: the cost function registered with register_cost failed: {e}") from e
    else:
        flops = b.flops
    ctx.records.append({
        "op": name,
        "inputs": list(b.ins),
        "outputs": list(b.outs),
        "bytes": b.total_bytes,
        "input_bytes": b.in_bytes,
        "output_bytes": b.out_bytes,
        "flops": flops,
        "calls": calls,
        "depth": depth - 1,
        "host": op.kernels.any_host,
        "fake": b.fake,
        "scope": scope,
        "phase": _phase(back),
    })
    for r in b.nested:
        r2 = dict(r)
        r2["depth"] = r["depth"] + depth
        r2["calls"] = None if (calls is None or r["calls"] is None) else calls * r["calls"]
        r2["scope"] = _join(scope, r["scope"])
        r2["phase"] = _phase(back or r["phase"] == "backward")
        ctx.records.append(r2)
    return flops


# ----------------------------------------------------------------------- Plan
def _fmt_shape(s: jax.ShapeDtypeStruct) -> str:
    dt = np.dtype(s.dtype) if not hasattr(s.dtype, "name") else s.dtype
    short = {
        "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
        "int32": "i32", "int64": "i64", "int8": "i8", "int16": "i16", "uint8": "u8",
        "uint32": "u32", "uint64": "u64", "bool": "bool", "complex64": "c64", "complex128": "c128",
    }.get(str(dt), str(dt))
    return f"{short}[{','.join(str(d) for d in s.shape)}]"


def _fmt_num(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, (int, np.integer)):
        v = int(v)
        for unit, div in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
            if abs(v) >= div * 10:
                return f"{v / div:.1f}{unit}"
        return str(v)
    return str(v)


class _Max:
    """The maximum of ints and symbolic expressions.

    Candidates that cannot be ordered for every value of the symbols are kept
    side by side and combined with ``jax.core.max_dim`` at the end.
    """

    __slots__ = ("cands",)

    def __init__(self) -> None:
        self.cands: list[Any] = []

    def add(self, v: Any) -> None:
        cands = self.cands
        if type(v) is int and len(cands) == 1 and type(cands[0]) is int:
            if v > cands[0]:
                cands[0] = v
            return
        keep = []
        for c in cands:
            order = _order(c, v)
            if order >= 0:  # c >= v: v adds nothing
                return
            if order == -2:  # incomparable
                keep.append(c)
        keep.append(v)
        self.cands = keep

    def value(self) -> Any:
        return _max_value(self.cands) if self.cands else 0


def _order(a: Any, b: Any) -> int:
    """1 if a > b, 0 if a == b, -1 if a < b, -2 if it depends on the symbols."""
    try:
        if a == b:
            return 0
        return 1 if a >= b else (-1 if a <= b else -2)
    except Exception:  # noqa: BLE001 - jax raises InconclusiveDimensionOperation
        return -2


def _nbytes(vs: Any) -> Any:
    """Bytes of the (non-literal) variables ``vs``, each counted once."""
    acc = _Acc()
    seen: set[int] = set()
    for v in vs:
        if isinstance(v, Literal) or id(v) in seen:
            continue
        seen.add(id(v))
        acc.add(_info(v.aval).nbytes)
    return acc.value()


# id(jaxpr) -> (jaxpr, transient peak bytes as _Max candidates)
_TRANSIENT_MEMO: dict[int, tuple[Any, Any]] = {}


def _extra(eqn: Any, out_bytes: Any) -> list[Any]:
    """Bytes an equation needs at its step beyond its inputs and outputs (its nested programs' temporaries).

    Returned as :class:`_Max` candidates (one int for concrete shapes).
    """
    subs = _sub_jaxprs(eqn)
    if not subs:
        return [0]
    loop = eqn.primitive.name in ("scan", "while")
    m = _Max()
    m.add(0)
    for j, _ in subs:
        for t in _transient(j):
            # a loop body's buffers come on top of the stacked outputs; a call's outputs are
            # the last of its body's buffers
            m.add(t if loop else t - out_bytes)
    return m.cands


def _liveness(jaxpr: Any, steps: list[Any] | None = None) -> list[Any]:
    """Peak bytes of the buffers a jaxpr creates (its inputs not counted), as :class:`_Max` candidates.

    Program-order liveness: an equation's outputs are allocated at its step
    (its nested program's temporaries with them) while its inputs are still
    live; a value is freed after its last use; the jaxpr's outputs stay live.
    With ``steps``, one ``(eqn, live bytes at the step)`` per equation is appended.
    Candidates stay free of ``max`` terms (symbolic comparisons of those are slow).
    """
    eqns = jaxpr.eqns
    outs = {id(v) for v in jaxpr.outvars if not isinstance(v, Literal)}
    last: dict[int, int] = {}
    for k, eqn in enumerate(eqns):
        for v in eqn.invars:
            if not isinstance(v, Literal):
                last[id(v)] = k
    owned: set[int] = set()  # created here (inputs belong to the caller)
    live: Any = 0
    peak = _Max()
    for k, eqn in enumerate(eqns):
        ob = _nbytes(eqn.outvars)
        base = live + ob
        extra = _extra(eqn, ob)
        if len(extra) == 1:
            during = base + extra[0]
            peak.add(during)
            if steps is not None:
                steps.append((eqn, during))
        else:
            for e in extra:
                peak.add(base + e)
            if steps is not None:
                steps.append((eqn, _max_value([base + e for e in extra])))
        live = base
        free = []
        for v in eqn.outvars:
            i = id(v)
            owned.add(i)
            if (i not in last and i not in outs) or isinstance(v, DropVar):  # unused: freed at once
                free.append(v)
        for v in eqn.invars:
            i = id(v)
            if i in owned and last.get(i) == k and i not in outs:
                free.append(v)
                owned.discard(i)
        if free:
            live = live - _nbytes(free)
    return peak.cands or [0]


#: Above this many candidates that JAX cannot order, a symbolic peak is an upper bound.
_EXACT_MAX = 8


def _max_value(cands: list[Any]) -> Any:
    """``max`` of candidates: a balanced tree of ``jax.core.max_dim`` (JAX simplifies deep nests slowly).

    More than :data:`_EXACT_MAX` symbolic candidates (a ``grad`` plan's steps,
    where parameter gradients grow while activations shrink) would take JAX
    minutes to combine; they give :func:`_coefficient_bound` instead.
    """
    if len(cands) > _EXACT_MAX:
        bound = _coefficient_bound(cands)
        if bound is not None:
            return bound
    return _balanced_max(cands)


def _balanced_max(cands: list[Any]) -> Any:
    if len(cands) == 1:
        return cands[0]
    mid = len(cands) // 2
    return jax.core.max_dim(_balanced_max(cands[:mid]), _balanced_max(cands[mid:]))


def _coefficient_bound(cands: list[Any]) -> Any:
    """One polynomial >= every candidate for all dims >= 1: the largest coefficient of each monomial.

    Reads the terms of JAX's symbolic expressions (``_sorted_terms``, not a
    public API); returns None when that fails, and the caller builds the exact max.
    """
    try:
        best: dict[Any, tuple[Any, Any]] = {}  # monomial -> (coefficient, monomial expression)
        const = None
        for c in cands:
            if isinstance(c, (int, np.integer)):
                const = int(c) if const is None else max(const, int(c))
                continue
            seen_const = False
            for term, coeff in c._sorted_terms:  # noqa: SLF001 - no public way to read coefficients
                if term.is_constant:
                    seen_const = True
                    const = coeff if const is None else max(const, coeff)
                    continue
                cur = best.get(term)
                if cur is None:
                    best[term] = (coeff, type(c)._from_term(term, 1, c.scope))  # noqa: SLF001
                elif coeff > cur[0]:
                    best[term] = (coeff, cur[1])
            if not seen_const:
                const = 0 if const is None else max(const, 0)
        out: Any = const or 0
        for coeff, mono in best.values():
            out = out + (mono * max(coeff, 0) if coeff != 1 else mono)
        return out
    except Exception:  # noqa: BLE001 - JAX internals changed: fall back to the exact max
        return None


def _transient(jaxpr: Any) -> list[Any]:
    hit = _TRANSIENT_MEMO.get(id(jaxpr))
    if hit is not None and hit[0] is jaxpr:
        return hit[1]
    t = _liveness(jaxpr)
    if len(_TRANSIENT_MEMO) > 20_000:
        _TRANSIENT_MEMO.clear()
    _TRANSIENT_MEMO[id(jaxpr)] = (jaxpr, t)
    return t


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
            jaxpr = self._program()
            args = _nbytes(list(jaxpr.invars) + list(jaxpr.constvars))
            steps: list[Any] = []
            peak = _max_value(_liveness(jaxpr, steps))
            ops = {r["op"] for r in self.records}
            timeline = []
            for k, (eqn, live) in enumerate(steps):
                scope, back = _eqn_scope(eqn, "", False)
                name = eqn.params.get("name") if eqn.primitive.name in _JIT_NAMES else None
                timeline.append({
                    "step": k,
                    "primitive": name if name in ops else eqn.primitive.name,
                    "scope": scope,
                    "phase": _phase(back),
                    "live_bytes": args + live,
                })
            self._memory = (args + peak, timeline)
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
                jaxpr = self._program()
                args = _nbytes(list(jaxpr.invars) + list(jaxpr.constvars))
                self._peak = args + _max_value(_liveness(jaxpr))
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
        if jax not in ("line", "per-primitive", "none"):
            raise ValueError(f"Plan.rows(jax=...) must be 'line', 'per-primitive' or 'none', got {jax!r}")
        rows = [["#", "op", "inputs", "outputs", "calls", "bytes", "flops", "phase", "scope"]]
        for i, r in enumerate(self.records):
            name = "  " * r["depth"] + r["op"]
            calls = "?" if r["calls"] is None else str(r["calls"])
            rows.append([
                str(i), name, " ".join(_fmt_shape(s) for s in r["inputs"]),
                " ".join(_fmt_shape(s) for s in r["outputs"]), calls,
                _fmt_num(r["bytes"]), _fmt_num(r["flops"]), r["phase"], r["scope"],
            ])
        prims = self.jax_primitives
        if prims and jax == "line":
            for g in self.jax_groups:
                n = g["count"]
                rows.append(["", f"(jax: {n} primitives)", "", "", str(n),
                             _fmt_num(g["bytes"]), _fmt_num(g["flops"]), g["phase"], g["scope"]])
        elif prims and jax == "per-primitive":
            for k in sorted(prims):
                p = prims[k]
                rows.append(["", f"(jax) {k}", "", "", str(p["count"]), _fmt_num(p["bytes"]), _fmt_num(p["flops"]), "", ""])
        t = self.totals
        rows.append(["", "total", "", "", str(t["op_calls"]), _fmt_num(t["bytes"]), _fmt_num(t["flops"]), "", ""])
        return rows

    def table(self, jax: str = "line") -> str:
        """The aligned text table (see :meth:`rows`)."""
        rows = self.rows(jax)
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        right = {0, 4, 5, 6}
        lines = []
        for k, r in enumerate(rows):
            cells = [cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths))]
            lines.append("  ".join(cells).rstrip())
            if k == 0 or k == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: parameters, activation bytes, peak bytes, records with unknown FLOPs."""
        t = self.totals
        extra = []
        if t.get("parameters") is not None:
            extra.append(f"parameters {_fmt_num(t['parameters'])}")
        extra.append(f"activation_bytes {_fmt_num(t['activation_bytes'])}")
        if self._jaxpr is not None:
            extra.append(f"peak_bytes {_fmt_num(self.peak_bytes)}")
        if t["unknown_flops"]:
            extra.append(f"{t['unknown_flops']} record(s) with unknown flops")
        return "; ".join(extra)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        rows = self.rows()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = []
        for k, r in enumerate(rows[1:]):
            style = ' style="font-weight:bold;border-top:1px solid"' if k == len(rows) - 2 else ""
            body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        t = self.totals
        caption = (
            f"jaxops.Plan: {t['op_calls']} op calls, flops {html.escape(_fmt_num(t['flops']))}, "
            f"bytes {html.escape(_fmt_num(t['bytes']))}; {html.escape(self.summary())}"
        )
        return (
            f'<table class="jaxops-plan"><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )


def _totals(ctx: _Ctx, in_avals: list[Any], out_avals: list[Any], params: Any) -> dict[str, Any]:
    op_flops, op_bytes, act = _Acc(), _Acc(), _Acc()
    unknown = 0
    n_calls = 0
    for r in ctx.records:
        if r["flops"] is None:
            unknown += 1
        if r["depth"]:
            continue
        n = 1 if r["calls"] is None else r["calls"]
        n_calls += n
        if r["flops"] is not None:
            op_flops.add(r["flops"], n)
        op_bytes.add(r["bytes"], n)
        act.add(r["output_bytes"], n)
    jax_flops, jax_bytes = _Acc(), _Acc()
    for p in ctx.prims.values():
        jax_flops.add(p.flops)
        jax_bytes.add(p.bytes)
        act.add(p.output_bytes)
    flops, nbytes = _Acc(), _Acc()
    flops.add(op_flops)
    flops.add(jax_flops)
    nbytes.add(op_bytes)
    nbytes.add(jax_bytes)
    ins, outs = _Acc(), _Acc()
    for a in in_avals:
        ins.add(_info(a).nbytes)
    for a in out_avals:
        outs.add(_info(a).nbytes)
    return {
        "flops": flops.value(),
        "bytes": nbytes.value(),
        "op_flops": op_flops.value(),
        "op_bytes": op_bytes.value(),
        "jax_flops": jax_flops.value(),
        "jax_bytes": jax_bytes.value(),
        "op_calls": n_calls,
        "unknown_flops": unknown + jax_flops.unknown,
        "parameters": params,
        "activation_bytes": act.value(),
        "input_bytes": ins.value(),
        "output_bytes": outs.value(),
    }


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
    ctx = _Ctx(ops)
    _walk(closed.jaxpr, ctx, 1, 1, top=True)
    params = None
    if len(args) >= 2:
        first = [v for v in jax.tree_util.tree_leaves(args[0]) if _is_array_leaf(v)]
        params = sum((math.prod(tuple(v.shape)) for v in first), 0)
    out_avals = list(closed.out_avals)
    totals = _totals(ctx, [a for a in closed.in_avals], out_avals, params)
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
