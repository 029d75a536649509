"""The legacy custom-op surface (PyTorch's ``torch._custom_ops``), on ordinary jaxops ops.

PyTorch's older API declares an op from a body that raises ``NotImplementedError`` and
adds the pieces one call at a time: kernels per device type (``impl``), the fake
(``impl_abstract``) and a backward split into ``impl_save_for_backward`` and
``impl_backward`` (which returns a dict of gradients keyed by argument name).

Underneath, a legacy op is an ordinary jaxops op: it is defined with
:meth:`jaxops.Library.define` on a library the legacy op owns, its kernels and fake are
registered with :meth:`jaxops.Library.impl`, and its backward with
``op.register_autograd``.  So ``jax.jit``, ``jax.grad``, ``jax.vmap``,
``jax.eval_shape``, :func:`jaxops.opcheck` and :func:`jaxops.plan` work on it, and it is
reachable as ``jaxops.ops.<ns>.<name>``.

>>> import jax, jax.numpy as jnp
>>> from jaxops import legacy
>>> @legacy.custom_op("legacydoc::sin")
... def sin(x: jax.Array) -> jax.Array:
...     raise NotImplementedError("the body of a legacy op: kernels come from legacy.impl")
>>> @legacy.impl("legacydoc::sin")
... def _(x):
...     return jnp.sin(x)
>>> @legacy.impl_save_for_backward("legacydoc::sin")
... def _(inputs, output):
...     return inputs.x
>>> @legacy.impl_backward("legacydoc::sin")
... def _(ctx, saved, grad):
...     return {"x": grad * jnp.cos(saved)}
>>> float(jax.grad(sin)(0.0))
1.0
>>> sin._destroy()

Differences from PyTorch, all forced by JAX: ``device_types`` also accepts JAX's
``"gpu"``, ``"rocm"`` and ``"tpu"``; "requires_grad" is "inside ``jax.grad`` /
``jax.vjp`` / ``jax.jvp``", so the autograd errors come when the op is differentiated,
never from a plain call or ``jit``; keyword-only ``Tensor`` parameters are accepted (the
underlying jaxops op takes them as positional-or-keyword, kernels still get them by
keyword).
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxops import dispatch as _dispatch
from jaxops import registry as _registry
from jaxops.legacy_validation import (
    SUPPORTED_DEVICE_TYPES,
    InvalidSchemaError,
    adapt,
    anonymous,
    backward_checks_schema,
    check_legacy_schema,
    check_no_kernel,
    check_output_differentiability,
    check_qualname,
    check_signature_matches,
    normalize_legacy_devices,
    parse_declared_schema,
    underlying_schema,
    validate_grads,
)
from jaxops.library import Library, dispatch_keys
from jaxops.op import parse_qualname
from jaxops.registry import OpOverloadPacket
from jaxops.schema import FunctionSchema

_LEGACY: dict[str, LegacyCustomOp] = {}


def _location(fn: Callable[..., Any]) -> str:
    return _dispatch.source_location(fn)


def _caller() -> str:
    """``file.py:LINE`` of the first frame outside jaxops (the user's registration)."""
    import os

    pkg = os.path.dirname(os.path.abspath(__file__))
    frame = inspect.currentframe()
    try:
        while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == pkg:
            frame = frame.f_back
        return "<unknown>" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"
    finally:
        del frame


# ------------------------------------------------------------------------------ the op
class LegacyCustomOp(OpOverloadPacket):
    """An op of the legacy API: callable, and an ``OpOverloadPacket`` of its jaxops op.

    Every jaxops function that takes an op (``opcheck``, ``register_*``, ``plan``) accepts
    it; ``legacy_op.default`` is the underlying :class:`jaxops.CustomOp`.

    >>> import jax
    >>> from jaxops import legacy
    >>> @legacy.custom_op("legacydoc::neg", "(Tensor x) -> Tensor")
    ... def neg(x):
    ...     raise NotImplementedError("the body of a legacy op: kernels come from legacy.impl")
    >>> neg.schema
    '(Tensor x) -> Tensor'
    >>> neg._destroy()
    """

    def __init__(self, qualname: str, declared: FunctionSchema, lib: Library, *, owned: bool, where: str) -> None:
        ns, _, rest_name = qualname.partition("::")
        base, _, overload = rest_name.partition(".")
        super().__init__(f"{ns}::{base}")
        self._full = qualname  # "ns::name" or, for a handle on an overload, "ns::name.overload"
        self._overload_name = overload
        self._declared = declared
        self._lib = lib
        self._owned = owned
        self._where = where
        self._kernel_devices: dict[str, str] = {}  # platform -> "file.py:LINE"
        self._abstract: str | None = None
        self._save: tuple[Callable[..., Any], str] | None = None
        self._backward: tuple[Callable[..., Any], str] | None = None
        self._output_differentiability: list[bool] | None = None
        self._bad_output_diff: str | None = None
        self._destroyed = False
        self._target: Any = None  # the jaxops op a handle (owned=False) was made for

    def _target_is_current(self) -> bool:
        overloads = _registry.get(self._qualname) or {}
        return overloads.get(self._overload_name) is self._target

    @property
    def default(self) -> Any:
        """The underlying :class:`jaxops.CustomOp` (the overload this handle is for)."""
        op = (_registry.get(self._qualname) or {}).get(self._overload_name)
        if op is None:
            raise AttributeError(f"op {self._full!r} is no longer registered")
        return op

    # -- identity
    @property
    def qualname(self) -> str:
        """``"ns::name"``."""
        return self._full

    @property
    def name(self) -> str:
        """``"ns::name"`` (legacy ops have one overload)."""
        return self._full

    @property
    def schema(self) -> str:
        """The declared schema without the name, e.g. ``"(Tensor x) -> Tensor"``."""
        return anonymous(self._declared)

    def __repr__(self) -> str:
        return f"<jaxops.legacy.LegacyCustomOp {self._full}{self.schema}>"

    def _check_alive(self) -> None:
        if self._destroyed:
            raise RuntimeError(f"legacy op {self._full} was destroyed (_destroy()); define it again")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check_alive()
        if self._bad_output_diff is not None:
            raise RuntimeError(self._bad_output_diff)
        return self.default(*args, **kwargs)

    # -- kernels
    def impl(
        self, device_types: str | Sequence[str] = ("cpu", "cuda"), *, host: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the kernel for ``device_types``.

        The kernel is traceable JAX code; ``host=True`` marks a NumPy kernel (as
        :func:`jaxops.custom_op`'s ``host``), which then needs :meth:`impl_abstract` to be
        traced.

        >>> # @op.impl("cpu")
        >>> # def _(x): return jnp.sin(x)
        """
        self._check_alive()
        platforms = normalize_legacy_devices(self._full, device_types)

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            where = _caller()
            check_no_kernel(self._full, device_types, platforms, self._kernel_devices, self.default)
            kernel = adapt(self._declared, fn)
            for p in platforms:
                self._lib.impl(self._full, kernel, p, host=host)
                self._kernel_devices[p] = where
            return fn

        return inner

    def impl_abstract(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the fake (shape-only) implementation.

        >>> # @op.impl_abstract()
        >>> # def _(x): return jax.ShapeDtypeStruct(x.shape, x.dtype)
        """
        self._check_alive()

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            if "CompositeImplicitAutograd" in dispatch_keys(self._full):
                raise RuntimeError(
                    f"legacy.impl_abstract({self._full!r}): the op has a CompositeImplicitAutograd "
                    "kernel, whose shapes come from tracing its body; it needs no abstract impl"
                )
            if self._abstract is not None:
                raise RuntimeError(
                    f"legacy.impl_abstract({self._full!r}): the op already has an abstract impl (a "
                    f"Meta implementation / fake) registered at {self._abstract}; an op has one"
                )
            try:
                self._lib.impl(self._full, adapt(self._declared, fn), "Meta")
            except RuntimeError as e:
                raise RuntimeError(
                    f"legacy.impl_abstract({self._full!r}): the op already has an abstract impl (a "
                    f"Meta implementation / fake): {e}"
                ) from None
            self._abstract = _caller()
            return fn

        return inner

    # -- autograd
    def impl_save_for_backward(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``fn(inputs, output) -> saved``; ``inputs`` is a namedtuple of the arguments.

        Runs once per forward under differentiation; ``saved`` (any pytree) is passed to
        the backward.
        """
        self._check_alive()
        backward_checks_schema(self._full, self._declared)

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._save = (fn, _caller())
            self._install_autograd()
            return fn

        return inner

    def impl_backward(
        self, output_differentiability: list[bool] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``fn(ctx, saved, *grads) -> {arg name: gradient}``.

        ``output_differentiability``: a list of bools, one per output, ``False`` for outputs
        that carry no gradient.
        """
        self._check_alive()
        backward_checks_schema(self._full, self._declared)
        returns = self._declared.returns
        check_output_differentiability(self._full, output_differentiability, returns)

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._backward = (fn, _caller())
            self._output_differentiability = output_differentiability
            self._bad_output_diff = None
            for idx, (d, r) in enumerate(zip(output_differentiability or (), returns)):
                if d and not r.type.is_tensor_like:
                    self._bad_output_diff = (
                        f"{self._full}: with output_differentiability={output_differentiability}, "
                        f"output {idx} has type {r.type}, which is not a Tensor, so it cannot be marked "
                        "as differentiable in output_differentiability (use False for it)"
                    )
            self._install_autograd()
            return fn

        return inner

    def _install_autograd(self) -> None:
        """(Re-)register the op's autograd from the legacy pieces (register_autograd)."""
        self.default.register_autograd(_legacy_backward(self), setup_context=_legacy_setup(self))

    # -- lifetime
    def _destroy(self) -> None:
        """Remove the op (if this API defined it) and every registration made through it."""
        if self._destroyed:
            return
        self._lib._destroy()
        self._destroyed = True
        if _LEGACY.get(self._full) is self:
            del _LEGACY[self._full]


def _legacy_setup(op: LegacyCustomOp) -> Callable[..., None]:
    save = op._save
    backward = op._backward
    bad = op._bad_output_diff
    names = [a.name for a in op._declared.arguments]
    Inputs = collections.namedtuple("Inputs", names)  # type: ignore[misc]  # noqa: PYI024

    def setup(ctx: Any, inputs: tuple[Any, ...], kw_inputs: dict[str, Any], output: Any) -> None:
        if backward is None:
            raise RuntimeError(
                f"Autograd has not been implemented for operator {op.qualname}. Please register "
                "a derivative formula with jaxops.legacy.impl_save_for_backward and "
                "jaxops.legacy.impl_backward, or call the op outside jax.grad / jax.vjp / jax.jvp"
            )
        if bad is not None:
            raise RuntimeError(bad)
        if save is None:
            raise RuntimeError(
                f"{op.qualname}: the legacy op has an impl_backward (at {backward[1]}) but we were "
                "unable to find a 'save_for_backward'; register one with "
                f"@jaxops.legacy.impl_save_for_backward({op.qualname!r})"
            )
        values = dict(zip(names, (*inputs, *(kw_inputs[n] for n in names[len(inputs):]))))
        ctx.legacy_values_are_none = tuple(
            (v is None) if not isinstance(v, (list, tuple)) else tuple(e is None for e in v)
            for v in values.values()
        )
        ctx.legacy_saved = save[0](Inputs(**values), output)

    return setup


def _legacy_backward(op: LegacyCustomOp) -> Callable[..., Any]:
    backward = op._backward
    diff = op._output_differentiability
    declared = op._declared
    n_pos = len(underlying_schema(declared).positional_arguments)

    def run(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        if backward is None:  # setup_context raises first; kept for a clear message regardless
            raise RuntimeError(f"Autograd has not been implemented for operator {op.qualname}")
        if diff is not None:
            grads = tuple(
                g if d else jax.tree_util.tree_map(jnp.zeros_like, g) for g, d in zip(grads, diff)
            )
        # values stand-ins for validation: None where the input was None
        values: dict[str, Any] = {}
        for a, none in zip(declared.arguments, ctx.legacy_values_are_none):
            if isinstance(none, tuple):
                values[a.name] = [None if n else 0 for n in none]
            else:
                values[a.name] = None if none else 0
        result = validate_grads(
            op.qualname, declared, lambda: op._backward[1] if op._backward is not None else "<unknown>",
            backward[0](ctx, ctx.legacy_saved, *grads), values,
        )
        out = []
        for a in underlying_schema(declared).arguments[:n_pos]:
            g = result.get(a.name) if a.type.is_tensor_like else None
            out.append(list(g) if isinstance(g, tuple) else g)
        return tuple(out)

    return run


# --------------------------------------------------------------------- public functions
def custom_op(qualname: str, schema: str | None = None) -> Callable[[Callable[..., Any]], LegacyCustomOp]:
    """Declare an op from a function whose body raises ``NotImplementedError``.

    With ``schema`` (``"(Tensor x, int dim) -> Tensor"``) the function's signature must
    match it; without, the schema is inferred from the annotations (as
    :func:`jaxops.infer_schema`).  The function's name must be the op's name.  The op
    has no kernel until :func:`impl` registers one.  Defining an op that exists raises
    ``RuntimeError`` until it is destroyed (``op._destroy()``).

    >>> import jax
    >>> from jaxops import legacy
    >>> @legacy.custom_op("legacydoc::twice")
    ... def twice(x: jax.Array) -> jax.Array:
    ...     raise NotImplementedError("the body of a legacy op: kernels come from legacy.impl")
    >>> twice.schema
    '(Tensor x) -> Tensor'
    >>> twice._destroy()
    """
    ns, name = check_qualname(qualname)
    declared: FunctionSchema | None = None
    if schema is not None:
        declared = parse_declared_schema(qualname, name, schema)

    def inner(fn: Callable[..., Any]) -> LegacyCustomOp:
        if not callable(fn):
            raise TypeError(f"legacy.custom_op({qualname!r}) decorates a function, got {type(fn).__name__}")
        if getattr(fn, "__name__", None) != name:
            raise ValueError(
                f"legacy.custom_op({qualname!r}): expected the function to have name {name!r} but got "
                f"{getattr(fn, '__name__', fn)!r}; rename the function or the op"
            )
        fs = declared
        if fs is None:
            from jaxops.inference import infer_function_schema

            fs = infer_function_schema(fn, mutates_args=(), op_name=qualname)
            check_legacy_schema(qualname, fs)
        else:
            check_signature_matches(qualname, fs, fn)
        if qualname in _LEGACY or _registry.get(qualname):
            raise RuntimeError(
                f"legacy.custom_op: tried to register an operator ({qualname}) with the same name as "
                f"an existing one multiple times; destroy the first (op._destroy() or "
                f"jaxops.legacy._destroy({qualname!r})) before defining it again"
            )
        lib = Library(ns, "FRAGMENT")
        lib.define(str(underlying_schema(fs).with_name(name)))
        op = LegacyCustomOp(qualname, fs, lib, owned=True, where=_location(fn))
        _LEGACY[qualname] = op
        op._install_autograd()
        return op

    return inner


def get_op(qualname: str) -> LegacyCustomOp:
    """The legacy handle of ``qualname``: the legacy op, or a new handle on an existing jaxops op.

    A handle on an op defined elsewhere (``Library.define``, ``jaxops.define``) registers its
    kernels, fake and backward on a library of its own; ``_destroy()`` undoes those
    registrations (not the op).
    """
    op = _LEGACY.get(qualname)
    if op is not None and (op._owned or op._target_is_current()):
        return op
    if op is not None:  # a handle on an op that was destroyed or redefined since
        op._destroy()
    ns, _ = parse_qualname(qualname)  # handles may name an overload ("ns::op.overload")
    try:
        existing = _registry.lookup(qualname)
    except KeyError:
        raise ValueError(
            f"jaxops.legacy: could not find the operator {qualname}; define it with "
            "@jaxops.legacy.custom_op, jaxops.define or Library.define first"
        ) from None
    handle = LegacyCustomOp(
        qualname, existing.function_schema.with_name(qualname), Library(ns, "FRAGMENT"),
        owned=False, where=_caller(),
    )
    handle._target = existing
    _LEGACY[qualname] = handle
    return handle


def impl(
    qualname: str,
    *,
    device_types: str | Sequence[str] = ("cpu", "cuda"),
    func: Callable[..., Any] | None = None,
    host: bool = False,
) -> Any:
    """Register a kernel of ``qualname`` for ``device_types`` (decorator, or with ``func=``).

    ``host=True`` marks a NumPy kernel (see :meth:`LegacyCustomOp.impl`).

    >>> # @legacy.impl("mylib::foo", device_types="cpu")
    >>> # def _(x): return jnp.sin(x)
    """
    register = get_op(qualname).impl(device_types, host=host)
    return register if func is None else register(func)


def impl_abstract(qualname: str, func: Callable[..., Any] | None = None) -> Any:
    """Register the fake (shape-only) implementation of ``qualname``.

    A second one raises ``RuntimeError`` naming the first one's ``file.py:LINE``.

    >>> # @legacy.impl_abstract("mylib::foo")
    >>> # def _(x): return jax.ShapeDtypeStruct(x.shape, x.dtype)
    """
    register = get_op(qualname).impl_abstract()
    return register if func is None else register(func)


def impl_save_for_backward(qualname: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(inputs, output) -> saved`` for the backward of ``qualname``.

    >>> # @legacy.impl_save_for_backward("mylib::foo")
    >>> # def _(inputs, output): return inputs.x
    """
    return get_op(qualname).impl_save_for_backward()


def impl_backward(
    qualname: str, output_differentiability: list[bool] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(ctx, saved, *grads) -> {arg name: gradient}`` for ``qualname``.

    >>> # @legacy.impl_backward("mylib::foo")
    >>> # def _(ctx, saved, grad): return {"x": grad * jnp.cos(saved)}
    """
    return get_op(qualname).impl_backward(output_differentiability)


def _destroy(qualname: str) -> None:
    """Destroy the legacy op (or legacy handle) ``qualname``; no error if there is none."""
    op = _LEGACY.get(qualname)
    if op is not None:
        op._destroy()


__all__ = [
    "InvalidSchemaError",
    "LegacyCustomOp",
    "SUPPORTED_DEVICE_TYPES",
    "custom_op",
    "get_op",
    "impl",
    "impl_abstract",
    "impl_backward",
    "impl_save_for_backward",
]
