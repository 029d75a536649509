"""Fake (shape-only) evaluation of one op.

A fake takes the op's arguments with every array replaced by an abstract value
(it has ``.shape``/``.dtype``/``.ndim`` and ``jnp`` functions work on it) and
returns arrays or :class:`jax.ShapeDtypeStruct` s of the output shapes.  Host
ops need one to be traced (it gives ``pure_callback`` its result shapes);
traceable ops are traced through their body instead.

Inside a fake, :func:`get_ctx` gives access to data-dependent output sizes.

:func:`active_fake` picks the fake of an op definition (a hook override such as
served profiles, then the registered fake, then the one derived from
annotations) and :func:`abstract_eval` evaluates it, cached per abstract
signature.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxops import dynamic, hooks, host, registry

if TYPE_CHECKING:
    from jaxops.definition import OpDefinition


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


def materialize(out: Any) -> Any:
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


def active_fake(defn: OpDefinition) -> Callable[..., Any] | None:
    """The fake used for shape evaluation: a hook override, then the registered, then the derived one."""
    override = hooks.fake_override(defn)
    if override is not None:
        return override
    if defn.fake is not None:
        return defn.fake.fn
    return defn.derived_fake


def _check_fake_structure(defn: OpDefinition, out: Any) -> None:
    """A fake must describe every output the schema declares (no ``None`` for a Tensor)."""
    rets = defn.function_schema.returns
    if not rets:
        return
    if defn.function_schema.returns_tuple and (not isinstance(out, (tuple, list)) or len(out) != len(rets)):
        raise RuntimeError(
            f"{defn.name}: the fake (register_fake) must return a tuple of {len(rets)} outputs "
            f"(the schema returns {defn.schema_str.split('->')[-1].strip()}), got {type(out).__name__}"
        )
    outs = out if defn.function_schema.returns_tuple else (out,)
    for i, (r, o) in enumerate(zip(rets, outs)):
        if o is None and not r.type.optional:
            raise RuntimeError(
                f"{defn.name}: the fake (register_fake) returned None for output {i}, which the "
                f"schema declares as {r.type}; return jax.ShapeDtypeStruct(shape, dtype) for it"
            )


def _normalize_fake_out(defn: OpDefinition, out: Any) -> Any:
    # Python numbers (SymInt outputs) take JAX's default dtypes: int64/float64 under x64,
    # the dtypes an eager call's result gets.
    def leaf(v: Any) -> Any:
        if isinstance(v, bool):
            return jax.ShapeDtypeStruct((), jnp.bool_)
        if isinstance(v, int):
            return jax.ShapeDtypeStruct((), jax.dtypes.canonicalize_dtype(np.int64))
        if isinstance(v, float):
            return jax.ShapeDtypeStruct((), jax.dtypes.canonicalize_dtype(np.float64))
        return v

    _check_fake_structure(defn, out)
    return jax.tree_util.tree_map(leaf, out, is_leaf=lambda v: isinstance(v, jax.ShapeDtypeStruct))


def abstract_eval(defn: OpDefinition, values: list[Any]) -> tuple[Any, list[Any]]:
    """Output ShapeDtypeStructs of a call, from the op's fake (cached per signature).

    Returns ``(outputs, dynamic_sizes)``.

    >>> # out_shapes, dynamic = fake.abstract_eval(op.definition, values)
    """
    fake = active_fake(defn)
    if fake is None:
        raise RuntimeError(
            f"{defn.name}: there is no fake impl registered for this op, so it cannot be traced "
            f"(jit/grad/vmap/eval_shape). Register one with @{defn.opname}.register_fake "
            f"(or jaxops.register_fake('{defn.name}')) that returns jax.ShapeDtypeStruct(s) of the "
            "outputs, or annotate the parameters and return with jaxtyping shapes"
        )
    arrays, statics = defn.split(values)
    abstract = jax.tree_util.tree_map(to_abstract, arrays)
    cache = defn.cache.setdefault("fake", {})
    key: Any = None
    try:
        key = (jax.tree_util.tree_structure(abstract), tuple(
            (tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(abstract)
        ), statics, registry.epoch())
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in cache:
        return cache[key]

    def run(f: Callable[..., Any]) -> Any:
        def traced(arrs: Any) -> Any:
            try:
                out = defn.call_kernel(f, defn.merge(arrs, statics))
            except Exception as e:  # noqa: BLE001 - re-raised naming the op
                host.reraise_naming_op(defn.name, e, "the fake (register_fake)", RuntimeError)
            return materialize(_normalize_fake_out(defn, out))

        return jax.eval_shape(traced, abstract)

    with dynamic.symbolic_scope_of(abstract):  # dynamic sizes share the inputs' symbolic scope
        result = run_fake(defn.name, fake, run)
    if key is not None:
        cache[key] = result
    return result


__all__ = ["FakeImplCtx", "abstract_eval", "active_fake", "get_ctx", "materialize", "run_fake", "to_abstract"]
