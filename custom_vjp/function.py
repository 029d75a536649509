"""``torch.autograd.Function`` for JAX: ``Function`` (``once_differentiable`` is re-exported).

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
``apply`` fills in ``forward``'s defaults, splits every positional argument into
array leaves and static data (:mod:`custom_vjp.trees`; any pytree works) and calls
the ``jax.custom_jvp`` cached for the Function class and that static structure
(:mod:`custom_vjp.call`).  Its primal runs only ``forward``; its JVP rule runs
``forward`` / ``setup_context`` with a fresh ctx, freezes the ctx into residuals
(:mod:`custom_vjp.ctx`) and emits the linear primitive of :mod:`custom_vjp._lin`,
transposed by the user's ``backward`` (its result checked by
:mod:`custom_vjp.gradients`) and evaluated by ``jvp`` or by the transpose of
``backward``.  Nothing travels through a Python side channel, so
``jax.checkpoint``, ``lax.scan`` and a vjp returned from ``jit`` work.

Use from the op layer
---------------------
``jaxops`` builds Functions with :func:`custom_vjp.rules.make_function`; every
method must be a staticmethod, and ``_custom_vjp_name`` sets the name used in
messages.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax
from jax._src import core

from custom_vjp.call import DEFAULT_MARK, Built, VmapInfo, overrides, vary_alike
from custom_vjp.ctx import FunctionCtx
from custom_vjp.gradients import function_name
from custom_vjp.once import once_differentiable
from custom_vjp.trees import (
    ArgSpec,
    arg_spec,
    array_leaves,
    find_static_tracer,
    is_array,
    signature_of,
    unflatten_out,
)

__all__ = ["Function", "FunctionCtx", "VmapInfo", "once_differentiable"]

#: Most cached rules kept per Function class (oldest dropped first).
_CACHE_LIMIT = 256
_LEGACY_MSG = (
    "Legacy autograd function with non-static forward method is deprecated. "
    "Please use new-style autograd function with static forward method. "
    "(Example: https://pytorch.org/docs/stable/autograd.html#torch.autograd.Function)"
)


# ----------------------------------------------------------------------------- Function


def _default(fn: Callable[..., Any]) -> staticmethod:
    setattr(fn, DEFAULT_MARK, True)
    return staticmethod(fn)


class _ClassInfo:
    """What ``apply`` needs to know about a Function class, computed once."""

    def __init__(self, cls: type) -> None:
        self.name = function_name(cls)
        self.legacy = not isinstance(inspect.getattr_static(cls, "forward"), staticmethod)
        self.cache: dict[Any, Built] = {}
        self.signature: inspect.Signature | None = None
        self.has_defaults = False
        self.param_names: list[str] = []
        if self.legacy:
            return
        try:
            sig: inspect.Signature | None = inspect.signature(cls.forward)
        except (TypeError, ValueError):
            sig = None
        params = list(sig.parameters.values()) if sig is not None else []
        setup_style = overrides(cls, "setup_context")
        if not setup_style:
            params = params[1:]  # forward(ctx, *args)
        self.param_names = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        # PyTorch binds the arguments (filling in defaults) when setup_context is defined.
        if setup_style and sig is not None:
            self.signature = sig
            self.has_defaults = any(
                p.default is not p.empty or p.kind == p.KEYWORD_ONLY for p in params
            )

    def label(self, i: int) -> str:
        """``argument i`` in messages, with ``forward``'s parameter name when it has one."""
        return f"argument {i} ({self.param_names[i]!r})" if i < len(self.param_names) else f"argument {i}"

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``forward``'s positional arguments with defaults filled in, and its keyword-only ones."""
        if self.signature is None or not (kwargs or self.has_defaults):
            return args, kwargs
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}.apply: {exc}") from None
        bound.apply_defaults()
        return tuple(bound.args), dict(bound.kwargs)


def _info_of(cls: type) -> _ClassInfo:
    info = cls.__dict__.get("_cvjp_info")
    if info is None:
        info = _ClassInfo(cls)
        cls._cvjp_info = info  # type: ignore[attr-defined]
    return info


def _tracing() -> bool:
    return not isinstance(core.trace_ctx.trace, core.EvalTrace)


def _check_static(info: _ClassInfo, specs: tuple[ArgSpec, ...], kwargs: dict[str, Any]) -> None:
    """Arrays must be positional; no tracer may hide in an argument's static half."""
    name = info.name
    for k, v in kwargs.items():
        if any(is_array(x) for x in jax.tree_util.tree_leaves(v)):
            raise TypeError(f"{name}.apply: array argument {k!r} must be passed positionally")
    if not _tracing():
        return
    for i, s in enumerate(specs):
        if s.tree.num_nodes > 1 and find_static_tracer(s):
            raise RuntimeError(
                f"{name}.apply: {info.label(i)} holds a JAX tracer in a static position (pytree "
                "aux data, e.g. an eqx.field(static=True) holding a traced array); static data "
                "cannot depend on traced values. Store the array in an ordinary (non-static) "
                "field so it is a differentiable leaf."
            )
    for k, v in kwargs.items():
        if find_static_tracer(arg_spec(v)):
            raise RuntimeError(
                f"{name}.apply: keyword argument {k!r} holds a JAX tracer in a static position; "
                "pass arrays positionally"
            )


class Function:
    """Base class of a custom-differentiated function (PyTorch's ``autograd.Function``).

    Subclass it with staticmethods ``forward`` (``forward(ctx, *args)``, or
    ``forward(*args)`` plus ``setup_context(ctx, inputs, output)``) and ``backward``
    (``backward(ctx, *grad_outputs)``), optionally ``jvp(ctx, *tangents)`` and
    ``vmap(info, in_dims, *args)``; call it with ``Fn.apply(*args)``.  An argument
    may be any pytree (an ``equinox.Module``, a dict, a tuple of arrays): its array
    leaves are differentiable, the rest is static, and ``backward`` returns a pytree
    of the same structure (or ``None``) for it.

    >>> import jax, jax.numpy as jnp
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
    #: Together with a ``vmap`` staticmethod it is an error under ``jax.vmap``.
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

    @_default
    def forward(*args: Any, **kwargs: Any) -> Any:
        """Compute the outputs (override)."""
        raise NotImplementedError(
            "You must implement the forward function for custom autograd.Function."
        )

    @_default
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: Any) -> None:
        """Save what ``backward`` needs (override to use ``forward(*args)`` style)."""
        raise NotImplementedError("setup_context is not implemented.")

    @_default
    def backward(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        """Return one gradient per ``forward`` input (override)."""
        raise NotImplementedError(
            "You must implement either the backward or vjp method for your custom "
            "autograd.Function to use it with backward mode AD."
        )

    vjp = backward

    @_default
    def jvp(ctx: FunctionCtx, *grad_inputs: Any) -> Any:
        """Return one output tangent per ``forward`` output (optional override)."""
        raise NotImplementedError(
            "You must implement the jvp function for custom autograd.Function to use it "
            "with forward mode AD."
        )

    @_default
    def vmap(info: VmapInfo, in_dims: tuple[Any, ...], *args: Any) -> Any:
        """Return ``(output, out_dims)`` for a batch (optional override)."""
        raise NotImplementedError("vmap is not implemented.")

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """Call the Function: ``forward`` now, ``backward``/``jvp`` under differentiation."""
        info = _info_of(cls)
        if info.legacy:
            raise RuntimeError(_LEGACY_MSG)
        args, kwargs = info.bind(args, kwargs)
        specs = tuple(arg_spec(a) for a in args)
        _check_static(info, specs, kwargs)
        try:
            key: Any = (specs, tuple(sorted((k, type(v), v) for k, v in kwargs.items())))
            hash(key)
        except TypeError:
            key = None
        built = info.cache.get(key) if key is not None else None
        if built is None:
            built = Built(cls, specs, dict(kwargs), info.param_names)
            if key is not None:
                if len(info.cache) >= _CACHE_LIMIT:  # e.g. a fresh closure per call as a static leaf
                    info.cache.pop(next(iter(info.cache)))
                info.cache[key] = built
        leaves = array_leaves(specs, args)
        if any(isinstance(x, core.Tracer) for x in leaves):
            out_dyn = built.fn(*vary_alike(leaves))
        else:
            # Concrete inputs cannot carry tangents or batch dims: skip the custom_jvp
            # machinery (~0.7 ms per eager call) and run the forward directly.
            out_dyn = built.forward_flat(*leaves)
        return unflatten_out(built.out_specs[signature_of(leaves)], out_dyn)
