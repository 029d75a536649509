"""``torch.autograd.Function`` for JAX: ``Function``, ``FunctionCtx``, ``once_differentiable``.

Write a Function as in PyTorch and call it with ``apply``::

    >>> import jax, jax.numpy as jnp
    >>> class MySin(Function):
    ...     @staticmethod
    ...     def forward(x):
    ...         return jnp.sin(x)
    ...     @staticmethod
    ...     def setup_context(ctx, inputs, output):
    ...         ctx.save_for_backward(inputs[0])
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return g * jnp.cos(x)
    >>> float(jax.grad(MySin.apply)(0.0 + jnp.zeros(())))
    1.0
    >>> float(jax.jvp(MySin.apply, (jnp.zeros(()),), (jnp.ones(()),))[1])
    1.0

Design
------
``apply`` calls a ``jax.custom_jvp`` (one per Function class and static-argument
structure, cached) whose primal runs only ``forward``: a plain call or ``jit``
never runs ``setup_context`` or ``backward``.  Its JVP rule (``symbolic_zeros=True``,
so unperturbed inputs give ``needs_input_grad``) runs ``forward`` /
``setup_context`` with a fresh ctx, *freezes* the ctx into array leaves (saved
tensors and array attributes, packed by the innermost saved-tensors hook) plus
static aux data (everything else), and returns as output tangent the linear
primitive :data:`custom_vjp._lin.function_lin_p` applied to (ctx leaves, input
tangents).  Transposing that primitive calls the user's ``backward`` on a ctx
rebuilt from the leaves; evaluating it runs the user's ``jvp`` or, without one,
the exact linear transpose of ``backward``.  Nothing travels through a Python
side channel, so ``jax.checkpoint``, ``lax.scan`` and a vjp returned from
``jit`` work.  With a ``setup_context``, the JVP rule gets the primal output by
calling the Function itself, so second-order derivatives of saved outputs go
through the Function's rules again (as in PyTorch) and a host (``pure_callback``)
forward stays twice differentiable.  A ``vmap`` staticmethod is installed with
``jax.custom_batching.custom_vmap`` around the primal ``forward``.

Use from the op layer
---------------------
``jaxops`` builds Functions dynamically; every method must be a staticmethod,
and ``_custom_vjp_name`` sets the name used in messages::

    >>> def fwd(x):
    ...     return x * 2.0
    >>> Op = type("foo", (Function,), {
    ...     "_custom_vjp_name": "mylib::foo",
    ...     "forward": staticmethod(fwd),
    ...     "setup_context": staticmethod(lambda ctx, inputs, output: None),
    ...     "backward": staticmethod(lambda ctx, g: 2.0 * g),
    ... })
    >>> float(jax.grad(Op.apply)(jnp.ones(())))
    2.0

``forward`` may call ``jax.pure_callback``; then give a ``vmap`` staticmethod or
rely on the callback's ``vmap_method``, and a ``backward`` written in JAX if
forward mode is wanted (a host backward supports reverse mode only and raises
``NotImplementedError`` under ``jax.jvp``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import core
from jax.custom_derivatives import SymbolicZero

from custom_vjp import _state
from custom_vjp._lin import LinRule, function_lin_p, lin_aval, vary_to, vma_of, zeros_of

__all__ = ["Function", "FunctionCtx", "VmapInfo", "once_differentiable"]

_ONCE_MSG = "trying to differentiate twice a function that was marked with @once_differentiable"
_LEGACY_MSG = (
    "Legacy autograd function with non-static forward method is deprecated. "
    "Please use new-style autograd function with static forward method. "
    "(Example: https://pytorch.org/docs/stable/autograd.html#torch.autograd.Function)"
)
_FREED_MSG = (
    "Trying to backward through the graph a second time (or directly access saved "
    "tensors after they have already been freed). Saved intermediate values of the graph "
    "are freed when the backward computation returns; read ctx.saved_tensors inside backward."
)


# ----------------------------------------------------------------------------- helpers


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, core.Tracer))


def _is_float(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def _fn_name(cls: type) -> str:
    return getattr(cls, "_custom_vjp_name", None) or cls.__name__


def _bw_name(cls: type) -> str:
    override = getattr(cls, "_custom_vjp_name", None)
    return f"{override} (backward)" if override else f"{cls.__name__}Backward"


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(Function, name)


@dataclasses.dataclass(frozen=True)
class VmapInfo:
    """What a ``vmap`` staticmethod learns about the batch (PyTorch's ``info``).

    >>> VmapInfo(batch_size=4).batch_size
    4
    """

    batch_size: int
    randomness: str = "error"


# ----------------------------------------------------------------------------- ctx


class FunctionCtx:
    """The ``ctx`` of a Function: saved tensors, flags and arbitrary attributes.

    In ``forward``/``setup_context``: ``save_for_backward``, ``mark_non_differentiable``,
    ``mark_dirty``, ``set_materialize_grads`` and plain attributes.  In ``backward``
    (a ctx rebuilt from residuals): ``saved_tensors``, ``needs_input_grad`` and the
    attributes.  A ctx kept past its backward raises ``RuntimeError`` on ``saved_tensors``.

    >>> ctx = FunctionCtx((True,))
    >>> ctx.save_for_backward(jnp.ones(2)); ctx.scale = 3
    >>> len(ctx.saved_tensors), ctx.scale, ctx.needs_input_grad
    (1, 3, (True,))
    """

    def __init__(self, needs_input_grad: tuple[bool, ...] = ()) -> None:
        object.__setattr__(self, "_cvjp", {
            "needs_input_grad": tuple(needs_input_grad),
            "saved": (),
            "unpack": None,
            "materialize": True,
            "non_diff": [],
            "dirty": [],
            "released": False,
            "lifetime": None,
        })

    # -- forward-side API
    @property
    def needs_input_grad(self) -> tuple[bool, ...]:
        """One bool per ``forward`` input: is a gradient wanted for it."""
        return self._cvjp["needs_input_grad"]

    def save_for_backward(self, *tensors: Any) -> None:
        """Save arrays (or ``None``) for ``backward``; read back with ``saved_tensors``."""
        self._cvjp["saved"] = tuple(tensors)

    def mark_non_differentiable(self, *outputs: Any) -> None:
        """Mark outputs of ``forward`` as non-differentiable (their gradient is zero)."""
        self._cvjp["non_diff"].extend(outputs)

    def mark_dirty(self, *inputs: Any) -> None:
        """Declare inputs that ``forward`` "modifies in place".

        JAX arrays are immutable: the value ``forward`` returns for the input is its
        new value and the input itself is unchanged, so this only records the fact.
        """
        self._cvjp["dirty"].extend(inputs)

    def set_materialize_grads(self, value: bool) -> None:
        """``False``: ``backward`` receives ``None`` instead of zeros for unused outputs."""
        self._cvjp["materialize"] = bool(value)

    @property
    def saved_tensors(self) -> tuple[Any, ...]:
        """The arrays given to ``save_for_backward`` (unpacked by saved-tensor hooks)."""
        state = self._cvjp
        lifetime = state["lifetime"]
        if state["released"] or (lifetime is not None and lifetime.released):
            raise RuntimeError(_FREED_MSG)
        unpack = state["unpack"]
        return tuple(unpack(p.value) if isinstance(p, _Packed) else p for p in state["saved"])

    # PyTorch spells the same thing this way as well.
    @property
    def saved_variables(self) -> tuple[Any, ...]:
        """Alias of ``saved_tensors``."""
        return self.saved_tensors

    def __repr__(self) -> str:
        attrs = ", ".join(sorted(k for k in vars(self) if k != "_cvjp"))
        return f"FunctionCtx(needs_input_grad={self.needs_input_grad}, attrs=[{attrs}])"


class _Lifetime:
    """Shared by a forward ctx and the trace it belongs to; set when backward returns."""

    def __init__(self) -> None:
        self.released = False


@dataclasses.dataclass
class _Frozen:
    """Static half of a frozen ctx (the array half travels as residual leaves).

    ``slots`` has one entry per leaf of ``(saved_tensors, attr_0, attr_1, ...)``:
    ``("s", value)`` for a static leaf, ``("a", None)`` for an array, or
    ``("p", treedef)`` for an array replaced by the pytree ``pack(array)`` returned.
    """

    needs_input_grad: tuple[bool, ...]
    materialize: bool
    unpack: Callable[[Any], Any] | None
    tree: Any
    n_saved: int
    attr_names: list[str]
    slots: list[tuple[str, Any]]
    lifetime: _Lifetime


def _freeze(ctx: FunctionCtx, lifetime: _Lifetime) -> tuple[list[Any], _Frozen]:
    """Split a forward ctx into residual arrays and static aux data.

    Every saved array (``save_for_backward`` and array attributes) goes through
    the innermost saved-tensors ``pack`` hook when one is active.
    """
    state = ctx._cvjp
    names = [k for k in vars(ctx) if k != "_cvjp"]
    values = (tuple(state["saved"]), *[getattr(ctx, k) for k in names])
    leaves, tree = jax.tree_util.tree_flatten(values, is_leaf=lambda x: x is None)
    n_saved = len(jax.tree_util.tree_leaves(values[0], is_leaf=lambda x: x is None))
    hooks = _state.saved_tensors_hooks_stack.get()
    pack, unpack = hooks[-1] if hooks else (None, None)
    res: list[Any] = []
    slots: list[tuple[str, Any]] = []
    for leaf in leaves:
        if not _is_array(leaf):
            slots.append(("s", leaf))
        elif pack is None:
            slots.append(("a", None))
            res.append(jnp.asarray(leaf))
        else:
            sub, subtree = jax.tree_util.tree_flatten(pack(leaf))
            if not all(_is_array(x) for x in sub):
                raise TypeError("saved_tensors_hooks: pack must return an array or a pytree of arrays")
            slots.append(("p", subtree))
            res.extend(jnp.asarray(x) for x in sub)
    frozen = _Frozen(
        needs_input_grad=state["needs_input_grad"],
        materialize=state["materialize"],
        unpack=unpack,
        tree=tree,
        n_saved=n_saved,
        attr_names=names,
        slots=slots,
        lifetime=lifetime,
    )
    return res, frozen


class _Packed:
    """A packed saved array waiting for ``unpack`` (saved tensors unpack lazily)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _thaw(frozen: _Frozen, res: Sequence[Any]) -> FunctionCtx:
    """Rebuild a backward ctx from residual arrays and the static aux data."""
    it = iter(res)
    leaves: list[Any] = []
    for k, (kind, info) in enumerate(frozen.slots):
        if kind == "s":
            leaves.append(info)
        elif kind == "a":
            leaves.append(next(it))
        else:
            packed = jax.tree_util.tree_unflatten(info, [next(it) for _ in range(info.num_leaves)])
            assert frozen.unpack is not None
            leaves.append(_Packed(packed) if k < frozen.n_saved else frozen.unpack(packed))
    values = jax.tree_util.tree_unflatten(frozen.tree, leaves)
    ctx = FunctionCtx(frozen.needs_input_grad)
    ctx._cvjp["materialize"] = frozen.materialize
    ctx._cvjp["unpack"] = frozen.unpack
    ctx._cvjp["saved"] = values[0]
    for name, value in zip(frozen.attr_names, values[1:]):
        object.__setattr__(ctx, name, value)
    return ctx


# ----------------------------------------------------------------------------- once_differentiable


@functools.cache
def _once_guard() -> Callable[[Any], Any]:
    @jax.custom_jvp
    def guard(x: Any) -> Any:
        return x

    @guard.defjvp
    def _guard_jvp(primals: Any, tangents: Any) -> Any:
        raise RuntimeError(_ONCE_MSG)

    return guard


def once_differentiable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``backward`` as not differentiable itself (PyTorch's decorator).

    First-order gradients work; differentiating through the backward (``grad(grad)``,
    ``jax.hessian``) raises ``RuntimeError`` "trying to differentiate twice" when that
    path is traced.

    >>> @once_differentiable
    ... def backward(ctx, g):
    ...     return 2 * g
    >>> float(backward(None, jnp.ones(())))
    2.0
    """

    @functools.wraps(fn)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        out = fn(ctx, *grads)
        guard = _once_guard()
        return jax.tree_util.tree_map(
            lambda g: guard(g) if _is_array(g) and _is_float(jnp.result_type(g)) else g, out
        )

    wrapper._cvjp_once_inner = fn  # type: ignore[attr-defined]
    return wrapper


# ----------------------------------------------------------------------------- argument specs

_DYN = object()  # marks a dynamic (array) slot in a spec


@dataclasses.dataclass(frozen=True)
class _ArgSpec:
    """How one positional argument maps to flat leaves: 'a' array, 'l' list, 's' static."""

    kind: str
    n: int = 0
    static: Any = None
    container: type = list


def _arg_spec(x: Any) -> _ArgSpec:
    if _is_array(x):
        return _ArgSpec("a", 1)
    if isinstance(x, (list, tuple)) and x and all(_is_array(e) for e in x):
        return _ArgSpec("l", len(x), container=type(x))
    return _ArgSpec("s", 0, x)


def _rebuild_args(specs: Sequence[_ArgSpec], leaves: Sequence[Any]) -> tuple[Any, ...]:
    out, pos = [], 0
    for s in specs:
        if s.kind == "a":
            out.append(leaves[pos])
        elif s.kind == "l":
            out.append(s.container(leaves[pos : pos + s.n]))
        else:
            out.append(s.static)
        pos += s.n
    return tuple(out)


@dataclasses.dataclass
class _OutSpec:
    """The structure of ``forward``'s output: a treedef and its static leaves."""

    tree: Any
    static: list[Any]  # _DYN for array leaves
    is_tuple: bool
    top_counts: list[int]  # leaves per top-level output


def _is_leaf(x: Any) -> bool:
    return x is None or _is_array(x)


def _flatten_out(out: Any) -> tuple[list[Any], _OutSpec]:
    leaves, tree = jax.tree_util.tree_flatten(out, is_leaf=_is_leaf)
    dyn = [x for x in leaves if _is_array(x)]
    static = [_DYN if _is_array(x) else x for x in leaves]
    is_tuple = isinstance(out, tuple)
    tops = out if is_tuple else (out,)
    counts = [len(jax.tree_util.tree_leaves(t, is_leaf=_is_leaf)) for t in tops]
    dyn = [x if isinstance(x, (jax.Array, core.Tracer)) else jnp.asarray(x) for x in dyn]
    return dyn, _OutSpec(tree, static, is_tuple, counts)


def _unflatten_out(spec: _OutSpec, dyn: Sequence[Any]) -> Any:
    it = iter(dyn)
    leaves = [next(it) if s is _DYN else s for s in spec.static]
    return jax.tree_util.tree_unflatten(spec.tree, leaves)


def _sig(leaves: Sequence[Any]) -> tuple[Any, ...]:
    return tuple((x.shape, x.dtype) for x in leaves)


# ----------------------------------------------------------------------------- the traced call


class _Built:
    """The cached ``jax.custom_jvp`` of one Function class and static-argument structure."""

    def __init__(self, cls: type, specs: tuple[_ArgSpec, ...], kwargs: dict[str, Any]) -> None:
        self.cls = cls
        self.name = _fn_name(cls)
        self.specs = specs
        self.kwargs = kwargs
        self.ctx_style = not _overrides(cls, "setup_context")
        self.out_specs: dict[Any, _OutSpec] = {}
        backward = cls.backward if _overrides(cls, "backward") else cls.vjp
        self.backward = backward
        self.raw_backward = getattr(backward, "_cvjp_once_inner", backward)
        self.has_jvp = _overrides(cls, "jvp")
        self.has_vmap = _overrides(cls, "vmap")
        if self.has_vmap and getattr(cls, "generate_vmap_rule", False):
            raise RuntimeError(
                f"You tried to vmap over {self.name}, but it has both generate_vmap_rule=True "
                "and an overridden vmap staticmethod. Please set generate_vmap_rule=False or "
                "delete the overridden vmap staticmethod to avoid ambiguity."
            )
        forward_flat: Callable[..., list[Any]] = self._forward_flat
        if self.has_vmap:
            forward_flat = jax.custom_batching.custom_vmap(self._forward_flat)
            forward_flat.def_vmap(self._vmap_rule)
        self.forward_flat = forward_flat
        fn = jax.custom_jvp(self._primal)
        fn.defjvp(self._jvp_rule, symbolic_zeros=True)
        self.fn = fn

    # -- primal
    def _call_forward(self, ctx: FunctionCtx | None, args: tuple[Any, ...]) -> Any:
        if self.ctx_style:
            ctx = FunctionCtx((False,) * len(args)) if ctx is None else ctx
            return self.cls.forward(ctx, *args, **self.kwargs)
        return self.cls.forward(*args, **self.kwargs)

    def _forward_flat(self, *leaves: Any) -> list[Any]:
        out = self._call_forward(None, _rebuild_args(self.specs, leaves))
        dyn, spec = _flatten_out(out)
        self.out_specs[_sig(leaves)] = spec
        return dyn

    def _primal(self, *leaves: Any) -> list[Any]:
        return list(self.forward_flat(*leaves))

    def _vmap_rule(self, axis_size: int, in_batched: Sequence[bool], *leaves: Any):
        args = _rebuild_args(self.specs, leaves)
        in_dims, pos = [], 0
        for s in self.specs:
            if s.kind == "a":
                in_dims.append(0 if in_batched[pos] else None)
            elif s.kind == "l":
                in_dims.append([0 if b else None for b in in_batched[pos : pos + s.n]])
            else:
                in_dims.append(None)
            pos += s.n
        out, out_dims = self.cls.vmap(VmapInfo(axis_size), tuple(in_dims), *args, **self.kwargs)
        dyn, spec = _flatten_out(out)
        tops = out if spec.is_tuple else (out,)
        dims_tops = out_dims if spec.is_tuple and isinstance(out_dims, (tuple, list)) else None
        flat_dims: list[Any] = []
        for i, top in enumerate(tops):
            d = dims_tops[i] if dims_tops is not None else out_dims
            top_leaves = [x for x in jax.tree_util.tree_leaves(top, is_leaf=_is_leaf)]
            if isinstance(d, (list, tuple)):
                d_leaves = list(d)
            else:
                d_leaves = [d] * len(top_leaves)
            flat_dims.extend(dd for x, dd in zip(top_leaves, d_leaves) if _is_array(x))
        outs, batched = [], []
        for x, d in zip(dyn, flat_dims):
            if d is None:
                outs.append(x)
                batched.append(False)
            else:
                outs.append(jnp.moveaxis(x, d, 0))
                batched.append(True)
        return outs, batched

    # -- differentiation
    def _jvp_rule(self, primals: Sequence[Any], tangents: Sequence[Any]):
        specs = self.specs
        perturbed = [
            not isinstance(t, SymbolicZero) and _is_float(p.dtype)
            for p, t in zip(primals, tangents)
        ]
        needs, pos = [], 0
        for s in specs:
            needs.append(any(perturbed[pos : pos + s.n]))
            pos += s.n
        ctx = FunctionCtx(tuple(needs))
        lifetime = _Lifetime()
        ctx._cvjp["lifetime"] = lifetime
        args = _rebuild_args(specs, primals)
        if self.ctx_style:
            out = self.cls.forward(ctx, *args, **self.kwargs)
            out_dyn, out_spec = _flatten_out(out)
            self.out_specs[_sig(primals)] = out_spec
        else:
            out_dyn = list(self.fn(*primals))
            out_spec = self.out_specs[_sig(primals)]
            out = _unflatten_out(out_spec, out_dyn)
            self.cls.setup_context(ctx, args, out)
            # setup_context sees the unflattened outputs: identify marks by identity.
        state = ctx._cvjp
        out_leaves_obj = [
            x for x in jax.tree_util.tree_leaves(out, is_leaf=_is_leaf) if _is_array(x)
        ]
        nd_ids = {id(x) for x in state["non_diff"]}
        diff = [
            id(o) not in nd_ids and _is_float(jnp.result_type(x))
            for o, x in zip(out_leaves_obj, out_dyn)
        ]
        out_dyn = [x if d else lax.stop_gradient(x) for x, d in zip(out_dyn, diff)]
        res, frozen = _freeze(ctx, lifetime)
        lin_idx = [i for i, p in enumerate(perturbed) if p]
        diff_idx = [i for i, d in enumerate(diff) if d]
        out_avals = [lin_aval(out_dyn[i]) for i in diff_idx]
        lin_avals = [lin_aval(primals[i]) for i in lin_idx]
        t_diff: list[Any] = []
        if lin_idx and diff_idx:
            call = _CallRule(self, frozen, out_spec, out_dyn, diff, list(primals), lin_idx)
            rule = LinRule(self.name, call.forward, call.backward, out_avals, lin_avals)
            t_diff = function_lin_p.bind(
                *res, *[tangents[i] for i in lin_idx], num_res=len(res), rule=rule
            )
        t_it = iter(t_diff)
        t_out = [
            next(t_it) if d and lin_idx else SymbolicZero(core.typeof(x).to_tangent_aval())
            for x, d in zip(out_dyn, diff)
        ]
        return out_dyn, t_out


class _CallRule:
    """The forward and backward rules of one traced call (closed over static data only)."""

    def __init__(
        self,
        built: _Built,
        frozen: _Frozen,
        out_spec: _OutSpec,
        out_dyn: Sequence[Any],
        diff: Sequence[bool],
        primals: Sequence[Any],
        lin_idx: Sequence[int],
    ) -> None:
        self.built = built
        self.frozen = frozen
        self.out_spec = out_spec
        # lin_aval keeps shard_map's varying axes: zeros and gradients made from these
        # avals must vary like the primals they stand for.
        self.out_avals = [lin_aval(x) for x in out_dyn]
        self.diff = list(diff)
        self.in_avals = [lin_aval(x) for x in primals]
        self.lin_idx = list(lin_idx)

    # -- reverse mode: the user's backward
    def _grad_outputs(self, cts: Sequence[Any]) -> tuple[Any, ...]:
        materialize = self.frozen.materialize
        it = iter(cts)
        dyn = []
        for a, d in zip(self.out_avals, self.diff):
            ct = next(it) if d else None
            if ct is None and materialize:
                ct = zeros_of(a)
            dyn.append(ct)
        spec = self.out_spec
        leaves_it = iter(dyn)
        leaves = [next(leaves_it) if s is _DYN else None for s in spec.static]
        groups, pos = [], 0
        tops = (
            jax.tree_util.tree_unflatten(spec.tree, leaves)
            if not spec.is_tuple
            else None
        )
        if spec.is_tuple:
            children = spec.tree.children()
            for child, n in zip(children, spec.top_counts):
                groups.append(jax.tree_util.tree_unflatten(child, leaves[pos : pos + n]))
                pos += n
            return tuple(groups)
        return (tops,)

    def backward(self, res: Sequence[Any], cts: Sequence[Any], *, raw: bool = False) -> list[Any]:
        ctx = _thaw(self.frozen, res)
        grads_out = self._grad_outputs(cts)
        bwd = self.built.raw_backward if raw else self.built.backward
        try:
            grads = bwd(ctx, *grads_out)
        finally:
            if not raw:
                ctx._cvjp["released"] = True
                self.frozen.lifetime.released = True
        flat = _normalize_grads(self.built, grads, self.in_avals)
        if not raw and _state.anomaly_mode.get():
            try:
                from custom_vjp.anomaly import check_backward_outputs
            except ImportError:  # pragma: no cover - the anomaly module is optional
                check_backward_outputs = None
            if check_backward_outputs is not None:
                per_arg = _group_per_arg(self.built.specs, flat)
                check_backward_outputs(self.built.name, tuple(per_arg))
        return [flat[i] for i in self.lin_idx]

    # -- forward mode: the user's jvp, or the transpose of the backward
    def forward(self, res: Sequence[Any], tangents: Sequence[Any]) -> list[Any]:
        if self.built.has_jvp:
            return self._user_jvp(res, tangents)
        diff_avals = [a for a, d in zip(self.out_avals, self.diff) if d]

        def bwd_of_cts(*cts: Any) -> tuple[Any, ...]:
            grads = self.backward(res, list(cts), raw=True)
            return tuple(
                zeros_of(self.in_avals[i]) if g is None else g
                for g, i in zip(grads, self.lin_idx)
            )

        name = self.built.name
        try:
            transposed = jax.linear_transpose(
                bwd_of_cts, *[_sds(a) for a in diff_avals]
            )
            out = transposed(tuple(tangents))
        except (RuntimeError, ValueError, AssertionError) as exc:
            if "differentiate twice" in str(exc) or "expected shape" in str(exc):
                raise
            raise _no_forward_ad(name, exc) from exc
        except (NotImplementedError, TypeError, jax.errors.JAXTypeError) as exc:
            raise _no_forward_ad(name, exc) from exc
        return list(out)

    def _user_jvp(self, res: Sequence[Any], tangents: Sequence[Any]) -> list[Any]:
        ctx = _thaw(self.frozen, res)
        flat_t: list[Any] = [None] * len(self.in_avals)
        for i, t in zip(self.lin_idx, tangents):
            flat_t[i] = t
        flat_t = [
            zeros_of(a) if t is None and _is_float(a.dtype) else t
            for t, a in zip(flat_t, self.in_avals)
        ]
        per_arg = _group_per_arg(self.built.specs, flat_t)
        out_t = self.built.cls.jvp(ctx, *per_arg)
        spec = self.out_spec
        tops = out_t if spec.is_tuple else (out_t,)
        if spec.is_tuple and not isinstance(out_t, tuple):
            tops = (out_t,)
        if len(tops) != len(spec.top_counts):
            raise RuntimeError(
                f"function {self.built.name}.jvp returned an incorrect number of tangents "
                f"(expected {len(spec.top_counts)}, got {len(tops)})"
            )
        leaves: list[Any] = []
        for top, n in zip(tops, spec.top_counts):
            got = jax.tree_util.tree_leaves(top, is_leaf=_is_leaf) if top is not None else []
            got = got + [None] * (n - len(got)) if len(got) < n else got
            leaves.extend(got[:n])
        dyn_t = [t for t, s in zip(leaves, spec.static) if s is _DYN]
        outs = []
        for k, (t, a, d) in enumerate(zip(dyn_t, self.out_avals, self.diff)):
            if not d:
                continue
            if t is None:
                outs.append(zeros_of(a))
                continue
            t = jnp.asarray(t)
            if tuple(t.shape) != tuple(a.shape):
                raise RuntimeError(
                    f"Function {self.built.name}.jvp returned an invalid tangent at index {k} - "
                    f"got {list(t.shape)} but expected shape compatible with {list(a.shape)}"
                )
            outs.append(_fit_vma(t.astype(a.dtype), a, f"Function {self.built.name}.jvp", "tangent", k))
        return outs


def _sds(a: core.ShapedArray) -> jax.ShapeDtypeStruct:
    if a.mat.varying:
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding, manual_axis_type=a.mat)
    return jax.ShapeDtypeStruct(a.shape, a.dtype)


def _fit_vma(g: Any, aval: core.ShapedArray, who: str, what: str, index: int) -> Any:
    """Make ``g`` vary over exactly the shard_map mesh axes ``aval`` varies over.

    A value that varies over fewer axes (a constant, a zero) is cast with a no-op
    ``pvary``; one that varies over more cannot be the derivative of the input it is
    returned for, so it is an error naming the Function (never a wrong gradient).
    """
    want = aval.mat.varying
    have = vma_of(g)
    if have == want:
        return g
    extra = have - want
    if extra:
        raise RuntimeError(
            f"{who} returned an invalid {what} at index {index} - it varies over the "
            f"shard_map mesh axes {sorted(map(str, extra))} but the value it is for varies only "
            f"over {sorted(map(str, want))}; reduce it over those axes (e.g. jax.lax.psum) or "
            "compute it from values that do not vary over them"
        )
    return vary_to(g, want)


def _no_forward_ad(name: str, exc: BaseException) -> NotImplementedError:
    return NotImplementedError(
        f"Trying to use forward AD with {name} that does not support it because it has not "
        "implemented the jvp staticmethod and its backward cannot be transposed into a "
        f"forward-mode rule ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "Define jvp(ctx, *tangents), or write backward in jax.numpy."
    )


def _group_per_arg(specs: Sequence[_ArgSpec], flat: Sequence[Any]) -> list[Any]:
    out, pos = [], 0
    for s in specs:
        if s.kind == "a":
            out.append(flat[pos])
        elif s.kind == "l":
            out.append(list(flat[pos : pos + s.n]))
        else:
            out.append(None)
        pos += s.n
    return out


def _fit_grad(built: _Built, index: int, g: Any, aval: core.ShapedArray) -> Any:
    """Check one gradient's shape (summing broadcast dims as PyTorch) and cast its dtype."""
    if g is None:
        return None
    g = jnp.asarray(g)
    shape, want = tuple(g.shape), tuple(aval.shape)
    if shape != want:
        try:
            ok = np.broadcast_shapes(want, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise RuntimeError(
                f"Function {_bw_name(built.cls)} returned an invalid gradient at index {index} - "
                f"got {list(shape)} but expected shape compatible with {list(want)}"
            )
        lead = len(shape) - len(want)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(want) if n == 1 and shape[lead + i] != 1
        )
        g = jnp.sum(g, axis=axes, keepdims=False).reshape(want)
    if _is_float(aval.dtype) and g.dtype != aval.dtype:
        g = g.astype(aval.dtype)
    return _fit_vma(g, aval, f"Function {_bw_name(built.cls)}", "gradient", index)


def _normalize_grads(built: _Built, grads: Any, in_avals: Sequence[core.ShapedArray]) -> list[Any]:
    """PyTorch's return rules for ``backward``; returns one entry per flat input leaf."""
    specs = built.specs
    n = len(specs)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) > n and all(g is None for g in grads[n:]):
        grads = grads[:n]
    if len(grads) != n:
        raise RuntimeError(
            f"function {_bw_name(built.cls)} returned an incorrect number of gradients "
            f"(expected {n}, got {len(grads)})"
        )
    flat: list[Any] = []
    pos = 0
    for i, (s, g) in enumerate(zip(specs, grads)):
        if s.kind == "s":
            if g is not None:
                raise RuntimeError(
                    f"function {_bw_name(built.cls)} returned a gradient different than None "
                    f"at position {i}, but the corresponding forward input was not an array"
                )
        elif s.kind == "a":
            flat.append(_fit_grad(built, i, g, in_avals[pos]))
        else:
            if g is None:
                flat.extend([None] * s.n)
            else:
                if not isinstance(g, (list, tuple)) or len(g) != s.n:
                    raise RuntimeError(
                        f"function {_bw_name(built.cls)} returned an incorrect number of "
                        f"gradients for list input {i} (expected a list of {s.n})"
                    )
                flat.extend(_fit_grad(built, i, e, in_avals[pos + k]) for k, e in enumerate(g))
        pos += s.n
    return flat


# ----------------------------------------------------------------------------- Function


def _vary_alike(leaves: list[Any]) -> list[Any]:
    """Under ``shard_map``: cast every input to vary over all axes any input varies over.

    JAX does this (``pvary``) to mixed operands of its own primitives; doing it before
    the Function means its rules only see inputs of one varying type, and the
    gradient of an input that does not vary (a replicated weight) is reduced over
    the mesh axes by the transpose of that cast, as for plain JAX code.
    """
    vmas = [vma_of(x) for x in leaves]
    union = frozenset().union(*vmas)
    if not union:
        return leaves
    return [x if v == union else vary_to(x, union) for x, v in zip(leaves, vmas)]


def _cache_of(cls: type) -> dict[Any, _Built]:
    cache = cls.__dict__.get("_cvjp_cache")
    if cache is None:
        cache = {}
        cls._cvjp_cache = cache  # type: ignore[attr-defined]
    return cache


class Function:
    """Base class of a custom-differentiated function (PyTorch's ``autograd.Function``).

    Subclass it with staticmethods ``forward`` (``forward(ctx, *args)``, or
    ``forward(*args)`` plus ``setup_context(ctx, inputs, output)``) and ``backward``
    (``backward(ctx, *grad_outputs)``), optionally ``jvp(ctx, *tangents)`` and
    ``vmap(info, in_dims, *args)``; call it with ``Fn.apply(*args)``.

    >>> class Double(Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         return 2 * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         return 2 * g
    >>> float(jax.grad(Double.apply)(jnp.ones(())))
    2.0
    """

    #: PyTorch's flag; JAX batches a Function without a ``vmap`` staticmethod anyway.
    generate_vmap_rule: bool = False
    #: Name used in messages instead of the class name (e.g. ``"mylib::foo"``).
    _custom_vjp_name: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            f"{self.__class__} should not be instantiated. Methods on autograd functions "
            "are all static, so you should invoke them on the class itself. "
            "Instantiating an autograd function will raise an error in a future version.",
            DeprecationWarning,
            stacklevel=2,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(_LEGACY_MSG)

    @staticmethod
    def forward(*args: Any, **kwargs: Any) -> Any:
        """Compute the outputs (override)."""
        raise NotImplementedError(
            "You must implement the forward function for custom autograd.Function."
        )

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: Any) -> None:
        """Save what ``backward`` needs (override to use ``forward(*args)`` style)."""
        raise NotImplementedError("setup_context is not implemented.")

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        """Return one gradient per ``forward`` input (override)."""
        raise NotImplementedError(
            "You must implement either the backward or vjp method for your custom "
            "autograd.Function to use it with backward mode AD."
        )

    vjp = backward

    @staticmethod
    def jvp(ctx: FunctionCtx, *grad_inputs: Any) -> Any:
        """Return one output tangent per ``forward`` output (optional override)."""
        raise NotImplementedError(
            "You must implement the jvp function for custom autograd.Function to use it "
            "with forward mode AD."
        )

    @staticmethod
    def vmap(info: VmapInfo, in_dims: tuple[Any, ...], *args: Any) -> Any:
        """Return ``(output, out_dims)`` for a batch (optional override)."""
        raise NotImplementedError("vmap is not implemented.")

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """Call the Function: ``forward`` now, ``backward``/``jvp`` under differentiation."""
        if not isinstance(inspect.getattr_static(cls, "forward"), staticmethod):
            raise RuntimeError(_LEGACY_MSG)
        for k, v in kwargs.items():
            if _is_array(v):
                raise TypeError(
                    f"{_fn_name(cls)}.apply: array argument {k!r} must be passed positionally"
                )
        specs = tuple(_arg_spec(a) for a in args)
        try:
            key: Any = (specs, tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:
            key = None
        built = _cache_of(cls).get(key) if key is not None else None
        if built is None:
            built = _Built(cls, specs, dict(kwargs))
            if key is not None:
                _cache_of(cls)[key] = built
        leaves: list[Any] = []
        for s, a in zip(specs, args):
            if s.kind == "a":
                leaves.append(a if isinstance(a, (jax.Array, core.Tracer)) else jnp.asarray(a))
            elif s.kind == "l":
                leaves.extend(
                    e if isinstance(e, (jax.Array, core.Tracer)) else jnp.asarray(e) for e in a
                )
        if any(isinstance(x, core.Tracer) for x in leaves):
            out_dyn = built.fn(*_vary_alike(leaves))
        else:
            # Concrete inputs cannot carry tangents or batch dims: skip the custom_jvp
            # machinery (~0.7 ms per eager call) and run the forward directly.
            out_dyn = built._forward_flat(*leaves)
        spec = built.out_specs[_sig(leaves)]
        return _unflatten_out(spec, out_dyn)
