"""Fake (shape-only) evaluation of one op.

A fake takes the op's arguments with every array replaced by an abstract value
(it has ``.shape``/``.dtype``/``.ndim`` and ``jnp`` functions work on it) and
returns arrays or :class:`jax.ShapeDtypeStruct` s of the output shapes.  Host
ops need one to be traced (it gives ``pure_callback`` its result shapes);
traceable ops are traced through their body instead.

Inside a fake, :func:`get_ctx` gives access to data-dependent output sizes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class FakeImplCtx:
    """Context object available inside a fake through :func:`jaxops.get_ctx`.

    >>> # inside a fake: n = jaxops.get_ctx().new_dynamic_size(min=0)
    """

    def __init__(self, op_name: str) -> None:
        self._op_name = op_name
        self.dynamic_sizes: list[Any] = []

    @property
    def op_name(self) -> str:
        return self._op_name

    def new_dynamic_size(self, *, min: int = 0, max: int | None = None) -> Any:  # noqa: A002
        """A size only known when the op runs (e.g. the number of nonzeros).

        Eager calls of the op return the real shape; under ``jax.eval_shape`` and
        :func:`jaxops.plan` the size is a symbolic dimension; under ``jax.jit``
        the op raises ``RuntimeError`` (data-dependent).
        """
        if not isinstance(min, (int, np.integer)) or isinstance(min, bool):
            raise TypeError(f"{self._op_name}: new_dynamic_size(min=...) must be an int, got {type(min).__name__}")
        if min < 0:
            raise ValueError(
                f"{self._op_name}: new_dynamic_size(min={min}): min must be greater than or equal to 0"
            )
        if max is not None:
            if not isinstance(max, (int, np.integer)) or isinstance(max, bool):
                raise TypeError(
                    f"{self._op_name}: new_dynamic_size(max=...) must be an int or None, got {type(max).__name__}"
                )
            if max < min:
                raise ValueError(f"{self._op_name}: new_dynamic_size(min={min}, max={max}): max must be >= min")
        from jaxops import dynamic

        size = dynamic.new_symbolic_size(self._op_name, len(self.dynamic_sizes), min, max)
        self.dynamic_sizes.append(size)
        return size


_current_ctx: contextvars.ContextVar[FakeImplCtx | None] = contextvars.ContextVar(
    "jaxops_fake_ctx", default=None
)


def get_ctx() -> FakeImplCtx:
    """The context of the fake being evaluated (call it only inside a fake).

    >>> # @op.register_fake
    >>> # def _(x):
    >>> #     n = jaxops.get_ctx().new_dynamic_size()
    >>> #     return jax.ShapeDtypeStruct((n, x.ndim), jnp.int32)
    """
    ctx = _current_ctx.get()
    if ctx is None:
        raise RuntimeError(
            "jaxops.get_ctx() was called outside a fake implementation; call it inside the "
            "function given to register_fake"
        )
    return ctx


@contextlib.contextmanager
def _fake_ctx(op_name: str) -> Iterator[FakeImplCtx]:
    ctx = FakeImplCtx(op_name)
    token = _current_ctx.set(ctx)
    try:
        yield ctx
    finally:
        _current_ctx.reset(token)


def to_abstract(x: Any) -> Any:
    """ShapeDtypeStruct of an array-like leaf (other leaves pass through)."""
    if x is None:
        return None
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
    return x


def _materialize(out: Any) -> Any:
    """Turn ShapeDtypeStructs returned by a fake into traced zeros of that shape."""

    def leaf(v: Any) -> Any:
        if isinstance(v, jax.ShapeDtypeStruct):
            return jnp.zeros(v.shape, v.dtype)
        return v

    return jax.tree_util.tree_map(leaf, out, is_leaf=lambda v: isinstance(v, jax.ShapeDtypeStruct))


def run_fake(
    op_name: str,
    fake: Callable[..., Any],
    call: Callable[[Callable[..., Any]], Any],
) -> tuple[Any, list[Any]]:
    """Abstractly evaluate ``fake``.

    ``call(fake)`` must call the fake with the op's arguments (arrays replaced by
    tracers of ``jax.eval_shape``).  Returns the output ShapeDtypeStructs and the
    data-dependent sizes the fake asked for.
    """
    with _fake_ctx(op_name) as ctx:
        out = call(fake)
    out = jax.tree_util.tree_map(
        lambda v: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) if hasattr(v, "shape") else v,
        out,
        is_leaf=lambda v: isinstance(v, jax.ShapeDtypeStruct),
    )
    return out, list(ctx.dynamic_sizes)


__all__ = ["FakeImplCtx", "get_ctx", "run_fake", "to_abstract"]
