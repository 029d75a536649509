"""The ``ctx`` of a Function and its conversion to residuals (freeze) and back (thaw).

A forward ctx holds whatever ``forward``/``setup_context`` put on it: saved tensors,
flags and arbitrary attributes.  :func:`freeze` splits it into residual arrays (they
travel through JAX as the derivative rule's inputs, so ``jit``, ``checkpoint`` and
``scan`` see them) and static aux data; :func:`thaw` rebuilds the ctx that ``backward``
and ``jvp`` read::

    >>> import jax.numpy as jnp
    >>> ctx = FunctionCtx((True,))
    >>> ctx.save_for_backward(jnp.ones(2)); ctx.scale = 3
    >>> res, frozen = freeze(ctx, Lifetime())
    >>> back = thaw(frozen, res)
    >>> len(back.saved_tensors), back.scale, len(res)
    (1, 3, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from custom_vjp import _state
from custom_vjp.trees import is_array, is_none_or_array

__all__ = [
    "FREED_MSG",
    "Frozen",
    "FunctionCtx",
    "Lifetime",
    "ctx_state",
    "freeze",
    "thaw",
    "wrap_saved",
]

FREED_MSG = (
    "Trying to backward through the graph a second time (or directly access saved "
    "tensors after they have already been freed). Saved intermediate values of the graph "
    "are freed when the backward computation returns; read ctx.saved_tensors inside backward."
)


class Lifetime:
    """Shared by a forward ctx and the trace it belongs to; set when backward returns."""

    def __init__(self) -> None:
        self.released = False


class FunctionCtx:
    """The ``ctx`` of a Function: saved tensors, flags and arbitrary attributes.

    In ``forward``/``setup_context``: ``save_for_backward``, ``save_for_forward``,
    ``mark_non_differentiable``, ``mark_dirty``, ``set_materialize_grads`` and plain
    attributes.  In ``backward`` (a ctx rebuilt from residuals): ``saved_tensors``,
    ``needs_input_grad`` and the attributes; in ``jvp``, ``saved_tensors`` is what
    ``save_for_forward`` saved (when it was called).  A ctx kept past its backward
    raises ``RuntimeError`` on ``saved_tensors``.

    >>> ctx = FunctionCtx((True,))
    >>> ctx.save_for_backward(jnp.ones(2)); ctx.scale = 3
    >>> len(ctx.saved_tensors), ctx.scale, ctx.needs_input_grad
    (1, 3, (True,))
    """

    def __init__(self, needs_input_grad: tuple[bool, ...] = ()) -> None:
        object.__setattr__(self, "_cvjp", {
            "needs_input_grad": tuple(needs_input_grad),
            "saved": (),
            "saved_fwd": None,
            "unpack": None,
            "wrap": None,
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
        """Save arrays, pytrees of arrays or ``None`` for ``backward`` (read: ``saved_tensors``)."""
        self._cvjp["saved"] = tuple(tensors)

    def save_for_forward(self, *tensors: Any) -> None:
        """Save arrays for ``jvp``, where ``saved_tensors`` returns them (PyTorch's method).

        >>> ctx = FunctionCtx(); ctx.save_for_forward(jnp.ones(1))
        >>> res, frozen = freeze(ctx, Lifetime())
        >>> len(thaw(frozen, res, for_jvp=True).saved_tensors), len(thaw(frozen, res).saved_tensors)
        (1, 0)
        """
        self._cvjp["saved_fwd"] = tuple(tensors)

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
        """The values given to ``save_for_backward`` (unpacked by saved-tensor hooks)."""
        state = self._cvjp
        lifetime = state["lifetime"]
        if state["released"] or (lifetime is not None and lifetime.released):
            raise RuntimeError(FREED_MSG)
        unpack, wrap = state["unpack"], state["wrap"]

        def read(v: Any) -> Any:
            if isinstance(v, _Packed):
                v = unpack(v.value)
            return wrap(v) if wrap is not None and is_array(v) else v

        if unpack is None and wrap is None:
            return tuple(state["saved"])
        return jax.tree_util.tree_map(read, tuple(state["saved"]), is_leaf=_packed_or_leaf)

    # PyTorch spells the same thing this way as well.
    @property
    def saved_variables(self) -> tuple[Any, ...]:
        """Alias of ``saved_tensors``."""
        return self.saved_tensors

    def __repr__(self) -> str:
        attrs = ", ".join(sorted(k for k in vars(self) if k != "_cvjp"))
        return f"FunctionCtx(needs_input_grad={self.needs_input_grad}, attrs=[{attrs}])"


class _Packed:
    """A packed saved array waiting for ``unpack`` (saved tensors unpack lazily)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _packed_or_leaf(x: Any) -> bool:
    return isinstance(x, _Packed) or is_none_or_array(x)


def ctx_state(ctx: FunctionCtx) -> dict[str, Any]:
    """The ctx's bookkeeping (marks, flags); for the modules of this package."""
    return ctx._cvjp


def wrap_saved(ctx: FunctionCtx, fn: Callable[[Any], Any]) -> None:
    """Pass every array the backward reads from ``ctx`` through ``fn``.

    Saved tensors go through ``fn`` when read (after any unpack hook), array
    attributes at once.  ``once_differentiable`` uses it to guard a backward's inputs.
    """
    ctx._cvjp["wrap"] = fn
    for name, value in list(vars(ctx).items()):
        if name != "_cvjp":
            object.__setattr__(
                ctx,
                name,
                jax.tree_util.tree_map(
                    lambda v: fn(v) if is_array(v) else v, value, is_leaf=is_none_or_array
                ),
            )


@dataclasses.dataclass
class Frozen:
    """Static half of a frozen ctx (the array half travels as residual leaves).

    ``slots`` has one entry per leaf of ``(saved_tensors, saved_for_forward, attr_0,
    ...)``: ``("s", value)`` for a static leaf, ``("a", None)`` for an array, or
    ``("p", treedef)`` for an array replaced by the pytree ``pack(array)`` returned.
    """

    needs_input_grad: tuple[bool, ...]
    materialize: bool
    unpack: Callable[[Any], Any] | None
    tree: Any
    n_saved: int
    attr_names: list[str]
    slots: list[tuple[str, Any]]
    lifetime: Lifetime


def freeze(ctx: FunctionCtx, lifetime: Lifetime) -> tuple[list[Any], Frozen]:
    """Split a forward ctx into residual arrays and static aux data.

    Every array saved for backward (``save_for_backward`` and array attributes) goes
    through the innermost saved-tensors ``pack`` hook when one is active; arrays saved
    for forward do not (as in PyTorch).
    """
    state = ctx._cvjp
    names = [k for k in vars(ctx) if k != "_cvjp"]
    values = (tuple(state["saved"]), state["saved_fwd"], *[getattr(ctx, k) for k in names])
    leaves, tree = jax.tree_util.tree_flatten(values, is_leaf=is_none_or_array)
    n_saved = len(jax.tree_util.tree_leaves(values[0], is_leaf=is_none_or_array))
    n_fwd = len(jax.tree_util.tree_leaves(values[1], is_leaf=is_none_or_array))
    hooks = _state.saved_tensors_hooks_stack.get()
    pack, unpack = hooks[-1] if hooks else (None, None)
    res: list[Any] = []
    slots: list[tuple[str, Any]] = []
    for k, leaf in enumerate(leaves):
        if not is_array(leaf):
            slots.append(("s", leaf))
        elif pack is None or n_saved <= k < n_saved + n_fwd:
            slots.append(("a", None))
            res.append(jnp.asarray(leaf))
        else:
            sub, subtree = jax.tree_util.tree_flatten(pack(leaf))
            if not all(is_array(x) for x in sub):
                raise TypeError("saved_tensors_hooks: pack must return an array or a pytree of arrays")
            slots.append(("p", subtree))
            res.extend(jnp.asarray(x) for x in sub)
    frozen = Frozen(
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


def thaw(frozen: Frozen, res: Sequence[Any], *, for_jvp: bool = False) -> FunctionCtx:
    """Rebuild the ctx of ``backward`` (or of ``jvp``) from residuals and aux data.

    For ``jvp`` (``for_jvp=True``), ``saved_tensors`` is what ``save_for_forward``
    saved when it was called, else what ``save_for_backward`` saved.
    """
    it = iter(res)
    leaves: list[Any] = []
    for k, (kind, info) in enumerate(frozen.slots):
        if kind == "s":
            leaves.append(info)
        elif kind == "a":
            leaves.append(next(it))
        else:
            packed = jax.tree_util.tree_unflatten(info, [next(it) for _ in range(info.num_leaves)])
            if frozen.unpack is None:  # pragma: no cover - freeze pairs pack with unpack
                raise RuntimeError("saved_tensors_hooks: a packed residual has no unpack hook")
            leaves.append(_Packed(packed) if k < frozen.n_saved else frozen.unpack(packed))
    values = jax.tree_util.tree_unflatten(frozen.tree, leaves)
    ctx = FunctionCtx(frozen.needs_input_grad)
    state = ctx._cvjp
    state["materialize"] = frozen.materialize
    state["unpack"] = frozen.unpack
    state["saved"] = values[0]
    if for_jvp and values[1] is not None:
        state["saved"] = values[1]
    for name, value in zip(frozen.attr_names, values[2:]):
        object.__setattr__(ctx, name, value)
    return ctx
