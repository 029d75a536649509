"""Autograd for ops: ``register_autograd`` and the fallback for host ops.

:func:`stage` is the outermost traced stage.  ``op.register_autograd(backward,
setup_context=...)`` (stored on the definition as an ``AutogradInfo``) is built on
:class:`custom_vjp.Function`: the op's forward becomes the Function's forward,
the user's ``setup_context``/``backward`` become its own, so ctx handling,
gradient normalisation and forward mode are shared with ``custom_vjp``.

A host op with no formula cannot be differentiated by JAX; what happens then is
decided by the autograd fallback mode (``"warn"`` by default, as in PyTorch,
``"nothing"`` or ``"error"``), and only when a gradient actually flows through
the op.

>>> import jaxops
>>> with jaxops.autograd_fallback_mode("error"):
...     pass
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax._src import core
from jax.custom_derivatives import SymbolicZero

from custom_vjp.rules import LinRule, lin_aval, linear_call, make_function, set_static, zeros_of
from jaxops import host
from jaxops import registry as _registry
from jaxops.definition import AutogradInfo, OpDefinition

Stage = Callable[[list[Any]], Any]

_MODES = ("warn", "nothing", "error")
_MODE_KEY = "autograd_fallback"  # registry mode name; "warn", the default, is stored as None


def _check_mode(mode: Any) -> None:
    if mode not in _MODES:
        raise ValueError(f"autograd fallback mode must be one of {_MODES}, got {mode!r}")


def set_autograd_fallback_mode(mode: str) -> None:
    """Set globally what differentiating a host op with no autograd formula does.

    The global value is the default of every thread and context that does not
    set one with :func:`autograd_fallback_mode`.

    >>> import jaxops
    >>> jaxops.set_autograd_fallback_mode("warn")
    """
    _check_mode(mode)
    # part of every trace-cache key, by value ("warn", the default, adds nothing)
    _registry.set_mode(_MODE_KEY, None if mode == "warn" else mode)


def get_autograd_fallback_mode() -> str:
    """The autograd fallback mode of the current thread / context."""
    return _registry.get_mode(_MODE_KEY, "warn")


@contextlib.contextmanager
def autograd_fallback_mode(mode: str) -> Iterator[None]:
    """Set the autograd fallback mode inside the block, for the current thread / context only.

    Other threads (and other ``contextvars`` contexts, e.g. asyncio tasks) keep
    their own mode; functions traced inside are retraced outside.

    >>> import jaxops
    >>> with jaxops.autograd_fallback_mode("nothing"):
    ...     pass
    """
    _check_mode(mode)
    with _registry.mode_scope(_MODE_KEY, None if mode == "warn" else mode):
        yield


# --------------------------------------------------------------------- the stage
def stage(defn: OpDefinition, inner: Stage) -> Stage:
    """``inner`` with the op's differentiation behaviour.

    A registered formula makes it a ``custom_vjp.Function``; a host op with no
    formula gets the fallback (a zero derivative that applies the fallback mode);
    a traceable op is differentiated by JAX through ``inner``.

    >>> # run = autograd.stage(defn, vmap.stage(defn, ...))
    """
    if defn.autograd is not None:
        return lambda values: _apply_registered(defn, inner, values)
    if defn.kernels.any_host:
        return lambda values: _apply_host_fallback(defn, inner, values)
    return inner


# ------------------------------------------------------------ host op, no formula
def _fallback_fires(op: OpDefinition) -> None:
    mode = get_autograd_fallback_mode()
    if mode == "nothing":
        return
    if mode == "error":
        raise RuntimeError(
            f"{op.name}: trying to differentiate through a host op that has no autograd formula "
            f"(no autograd formula registered). Register one with {op.name.split('::')[-1]}"
            ".register_autograd(backward, setup_context=...), or use "
            "jaxops.autograd_fallback_mode('nothing') to treat its gradient as zero"
        )
    warnings.warn(
        f"{op.name}: an autograd kernel was not registered for this host op, so its gradient is "
        "treated as zero. Register one with register_autograd(...), or silence this with "
        "jaxops.autograd_fallback_mode('nothing') (or 'error' to make it an error)",
        UserWarning,
        stacklevel=2,
    )


def _apply_host_fallback(op: OpDefinition, inner: Stage, values: list[Any]) -> Any:
    """A host op with no formula: a zero derivative whose rules apply the fallback mode.

    A ``custom_jvp`` whose output tangent is the linear primitive of :func:`custom_vjp.rules.linear_call`
    (the linear primitive ``custom_vjp.Function`` uses): evaluating it (forward mode:
    ``jax.jvp``, ``jacfwd``) and transposing it with a non-zero cotangent (reverse
    mode) both apply the fallback mode and give zeros, while a symbolic-zero
    cotangent (an unused output) never reaches the rule.
    """
    args = op.leaves(values)
    leaves = args.leaves
    if not leaves:
        return inner(values)

    @jax.custom_jvp
    def call(*flat: Any) -> Any:
        return inner(args.rebuild(flat))

    def jvp(primals: Any, tangents: Any) -> Any:
        # The primal through ``call`` again: differentiating this rule (hessian) gives zero too.
        out = call(*primals)
        out_leaves, out_tree = jax.tree_util.tree_flatten(out)
        lin_idx = [
            i for i, (p, t) in enumerate(zip(primals, tangents))
            if not isinstance(t, SymbolicZero) and _is_float(p)
        ]
        diff_idx = [k for k, o in enumerate(out_leaves) if _is_float(o)]
        t_out: list[Any] = [SymbolicZero(core.typeof(o).to_tangent_aval()) for o in out_leaves]
        if lin_idx and diff_idx:
            # lin_aval/zeros_of keep shard_map's varying axes (the tangent types JAX expects)
            out_avals = [lin_aval(out_leaves[k]) for k in diff_idx]
            lin_avals = [lin_aval(primals[i]) for i in lin_idx]

            def forward(_res: Any, _tangents: Any) -> list[Any]:
                _fallback_fires(op)
                return [zeros_of(a) for a in out_avals]

            def backward(_res: Any, cts: Any) -> list[Any]:
                if any(c is not None for c in cts):
                    _fallback_fires(op)
                return [None] * len(lin_idx)

            rule = LinRule(op.name, forward, backward, out_avals, lin_avals)
            t_diff = linear_call([tangents[i] for i in lin_idx], rule)
            for k, t in zip(diff_idx, t_diff):
                t_out[k] = t
        return out, jax.tree_util.tree_unflatten(out_tree, t_out)

    call.defjvp(jvp, symbolic_zeros=True)
    return call(*leaves)


def _is_float(x: Any) -> bool:
    return bool(jnp.issubdtype(x.dtype, jnp.inexact))


# ----------------------------------------------------------- registered formulas
class _CtxView:
    """The ctx the user's callbacks see: the Function ctx with per-parameter ``needs_input_grad``."""

    def __init__(self, ctx: Any, needs: tuple[bool, ...]) -> None:
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "_needs", needs)

    @property
    def needs_input_grad(self) -> tuple[bool, ...]:
        return self._needs

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_ctx"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_ctx"), name, value)


def _function_class(op: OpDefinition, inner: Stage, struct: tuple[Any, ...]) -> type:
    cache = op.cache.setdefault("autograd", {})
    key = struct  # one stage chain per definition state: the cache is emptied on change
    cls = cache.get(key)
    if cls is not None:
        return cls
    reg: AutogradInfo = op.autograd  # type: ignore[assignment]
    params = op.binder.params
    n_pos = op.binder.n_positional
    kw_names = [p.name for p in params[n_pos:]]

    def unflatten(flat: tuple[Any, ...]) -> list[Any]:
        out: list[Any] = []
        i = 0
        for n in struct:
            if n is None:
                out.append(flat[i])
                i += 1
            else:
                out.append(list(flat[i : i + n]))
                i += n
        return out

    def per_param_needs(flat_needs: tuple[bool, ...]) -> tuple[bool, ...]:
        out: list[bool] = []
        i = 0
        for n in struct[:n_pos]:
            if n is None:
                out.append(bool(flat_needs[i]))
                i += 1
            else:
                out.append(any(flat_needs[i : i + n]))
                i += n
        return tuple(out)

    def forward(*flat: Any) -> Any:
        return inner(unflatten(flat))

    def setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        needs = per_param_needs(tuple(getattr(ctx, "needs_input_grad", ())))
        view = _CtxView(ctx, needs)
        # Only the static tuple travels to backward: a view (holding this forward ctx and
        # its traced saved arrays) would be frozen as static aux data and leak tracers.
        set_static(ctx, "_jaxops_needs", needs)
        if reg.setup_context is None:
            return
        vals = unflatten(inputs)
        pos = tuple(vals[:n_pos])
        if reg.setup_arity == 4:
            reg.setup_context(view, pos, dict(zip(kw_names, vals[n_pos:])), output)
        else:
            reg.setup_context(view, pos, output)

    def backward(ctx: Any, *grads: Any) -> Any:
        view = _CtxView(ctx, getattr(ctx, "_jaxops_needs", ()))
        try:
            res = reg.backward(view, *grads)
        except Exception as e:  # noqa: BLE001 - re-raised naming the op
            host.reraise_naming_op(op.name, e, "the backward (register_autograd)", RuntimeError)
        if not isinstance(res, (tuple, list)) or (
            n_pos == 1 and struct[0] is not None and isinstance(res, list)
        ):
            res = (res,)
        res = tuple(res)
        if len(res) < n_pos:
            raise RuntimeError(
                f"{op.name}: the backward returned an incorrect number of gradients: expected "
                f"{n_pos} (one per positional input), got {len(res)}"
            )
        extra = res[n_pos:]
        if any(e is not None for e in extra):
            raise RuntimeError(
                f"{op.name}: the backward returned an incorrect number of gradients: expected "
                f"{n_pos} (one per positional input), got {len(res)}"
            )
        flat: list[Any] = []
        for n, g in zip(struct[:n_pos], res[:n_pos]):
            if n is None:
                flat.append(g)
            elif g is None:
                flat.extend([None] * n)
            else:
                if not isinstance(g, (list, tuple)) or len(g) != n:
                    raise RuntimeError(
                        f"{op.name}: the gradient for a list input must be a list of {n} arrays "
                        f"(or None), got {type(g).__name__}"
                    )
                flat.extend(g)
        flat.extend([None] * sum(1 if n is None else n for n in struct[n_pos:]))
        return tuple(flat)

    cls = make_function(
        op.name,
        forward=forward,
        setup_context=setup,
        backward=backward,
        forward_ad_fix=(
            f"Forward mode through {op.name} is derived from its registered backward: write that "
            "backward in jax.numpy (no callbacks, no NumPy)"
        ),
    )
    cache[key] = cls
    return cls


def _apply_registered(op: OpDefinition, inner: Stage, values: list[Any]) -> Any:
    flat: list[Any] = []
    struct: list[Any] = []
    for p, v in zip(op.binder.params, values):
        if p.kind == "tensor_list" and v is not None:
            struct.append(len(v))
            flat.extend(v)
        else:
            struct.append(None)
            flat.append(v)
    cls = _function_class(op, inner, tuple(struct))
    return cls.apply(*flat)


__all__ = [
    "autograd_fallback_mode",
    "get_autograd_fallback_mode",
    "set_autograd_fallback_mode",
    "stage",
]
