"""How a Function's arguments and outputs map to flat array leaves.

Every positional argument of ``Function.apply`` is split as
``equinox.partition(arg, equinox.is_array)`` does: its array leaves are the
differentiable primals (flattened in pytree order) and everything else, its
structure included, is static.  An array, a list of arrays, a dict, an
``equinox.Module`` and a Python float are all handled the same way::

    >>> import jax.numpy as jnp
    >>> spec = arg_spec({"w": jnp.ones(2), "act": "relu"})
    >>> spec.n, spec.rebuild([jnp.zeros(2)])["act"]
    (1, 'relu')

The output of ``forward`` is flattened the same way (:func:`flatten_out`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core

__all__ = [
    "DYN",
    "ArgSpec",
    "OutSpec",
    "arg_spec",
    "array_leaves",
    "as_jax",
    "find_static_tracer",
    "flatten_out",
    "is_array",
    "is_float",
    "is_none_or_array",
    "per_arg",
    "rebuild_args",
    "signature_of",
    "unflatten_out",
]

#: Marks a dynamic (array) leaf in a spec's list of static leaves.
DYN: Any = type("DYN", (), {"__repr__": lambda self: "DYN"})()


def is_array(x: Any) -> bool:
    """``equinox.is_array``, without importing equinox (half a second at import).

    A JAX array (tracers included), a NumPy array or a NumPy scalar.
    """
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def is_float(dtype: Any) -> bool:
    """Is ``dtype`` a floating or complex dtype (one that carries gradients)."""
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def is_none_or_array(x: Any) -> bool:
    """The ``is_leaf`` used for every flatten here: ``None`` is a leaf, not an empty node."""
    return x is None or is_array(x)


def as_jax(x: Any) -> Any:
    """``x`` as a JAX value (NumPy arrays and scalars are converted)."""
    return x if isinstance(x, (jax.Array, core.Tracer)) else jnp.asarray(x)


@dataclasses.dataclass(frozen=True)
class ArgSpec:
    """The static half of one positional argument.

    ``tree`` is the argument's treedef (``None`` counts as a leaf), ``static`` holds
    one entry per leaf (:data:`DYN` for an array leaf, else the leaf itself) and ``n``
    is the number of array leaves.  Two specs are equal when the argument has the
    same structure and the same static leaves (of the same types), so a spec is a
    cache key.
    """

    tree: Any
    static: tuple[Any, ...]
    n: int
    types: tuple[type, ...] = ()

    @property
    def is_bare_array(self) -> bool:
        """The argument is a single array (not a container of one)."""
        return self.n == 1 and self.tree.num_nodes == 1

    def rebuild(self, leaves: Sequence[Any]) -> Any:
        """The argument with its array leaves replaced by ``leaves`` (``len == n``)."""
        it = iter(leaves)
        return jax.tree_util.tree_unflatten(
            self.tree, [next(it) if s is DYN else s for s in self.static]
        )

    def fill(self, leaves: Sequence[Any], static: Any = None) -> Any:
        """The argument's structure with ``leaves`` at array positions, ``static`` elsewhere."""
        it = iter(leaves)
        return jax.tree_util.tree_unflatten(
            self.tree, [next(it) if s is DYN else static for s in self.static]
        )


_ARRAY_SPEC = ArgSpec(jax.tree_util.tree_structure(0), (DYN,), 1)


def arg_spec(x: Any) -> ArgSpec:
    """Split one argument into its :class:`ArgSpec` (see the module docstring)."""
    if is_array(x):
        return _ARRAY_SPEC
    leaves, tree = jax.tree_util.tree_flatten(x, is_leaf=is_none_or_array)
    static = tuple(DYN if is_array(v) else v for v in leaves)
    types = tuple(type(v) for v in static)
    return ArgSpec(tree, static, sum(s is DYN for s in static), types)


def array_leaves(specs: Sequence[ArgSpec], args: Sequence[Any]) -> list[Any]:
    """The array leaves of ``args`` in order, as JAX values."""
    out: list[Any] = []
    for s, a in zip(specs, args):
        if s is _ARRAY_SPEC:
            out.append(as_jax(a))
        elif s.n:
            out.extend(
                as_jax(v)
                for v in jax.tree_util.tree_leaves(a, is_leaf=is_none_or_array)
                if is_array(v)
            )
    return out


def rebuild_args(specs: Sequence[ArgSpec], leaves: Sequence[Any]) -> tuple[Any, ...]:
    """The positional arguments rebuilt from their specs and the flat array leaves."""
    out, pos = [], 0
    for s in specs:
        out.append(s.rebuild(leaves[pos : pos + s.n]))
        pos += s.n
    return tuple(out)


def per_arg(specs: Sequence[ArgSpec], flat: Sequence[Any]) -> list[Any]:
    """Group one value per array leaf into one value per argument.

    A bare array gets its value, a pytree argument its structure holding the values
    (``None`` at static leaves), a static argument ``None``.
    """
    out, pos = [], 0
    for s in specs:
        chunk = flat[pos : pos + s.n]
        if not s.n:
            out.append(None)
        elif s.is_bare_array:
            out.append(chunk[0])
        else:
            out.append(s.fill(chunk))
        pos += s.n
    return out


def _tracer_in(value: Any) -> bool:
    return any(
        isinstance(v, core.Tracer)
        for v in jax.tree_util.tree_leaves(value, is_leaf=lambda v: isinstance(v, core.Tracer))
    )


def find_static_tracer(spec: ArgSpec) -> bool:
    """Does a JAX tracer hide in the static half of an argument?

    Static leaves cannot be tracers (those are arrays), but a pytree node's aux data
    can hold one: an ``eqx.field(static=True)`` set to a traced value.  Such a value
    would be baked into the cached rule and leak out of its trace.
    """
    stack = [spec.tree]
    while stack:
        tree = stack.pop()
        data = tree.node_data()
        if data is not None and data[1] is not None and _tracer_in(data[1]):
            return True
        stack.extend(tree.children())
    return False


@dataclasses.dataclass
class OutSpec:
    """The structure of ``forward``'s output: a treedef and its static leaves."""

    tree: Any
    static: list[Any]  # DYN for array leaves
    is_tuple: bool
    top_counts: list[int]  # leaves per top-level output

    def groups(self, leaves: Sequence[Any]) -> tuple[Any, ...]:
        """One pytree per top-level output, from one value per leaf."""
        if not self.is_tuple:
            return (jax.tree_util.tree_unflatten(self.tree, list(leaves)),)
        out, pos = [], 0
        for child, n in zip(self.tree.children(), self.top_counts):
            out.append(jax.tree_util.tree_unflatten(child, list(leaves[pos : pos + n])))
            pos += n
        return tuple(out)


def flatten_out(out: Any) -> tuple[list[Any], OutSpec]:
    """Split ``forward``'s output into its array leaves (as JAX values) and an :class:`OutSpec`."""
    leaves, tree = jax.tree_util.tree_flatten(out, is_leaf=is_none_or_array)
    dyn = [as_jax(x) for x in leaves if is_array(x)]
    static = [DYN if is_array(x) else x for x in leaves]
    is_tuple = isinstance(out, tuple)
    tops = out if is_tuple else (out,)
    counts = [len(jax.tree_util.tree_leaves(t, is_leaf=is_none_or_array)) for t in tops]
    return dyn, OutSpec(tree, static, is_tuple, counts)


def unflatten_out(spec: OutSpec, dyn: Sequence[Any]) -> Any:
    """The output rebuilt from its spec and array leaves."""
    it = iter(dyn)
    leaves = [next(it) if s is DYN else s for s in spec.static]
    return jax.tree_util.tree_unflatten(spec.tree, leaves)


def signature_of(leaves: Sequence[Any]) -> tuple[Any, ...]:
    """Shapes and dtypes of ``leaves``: the key of the output spec seen for them."""
    avals = [core.typeof(x) for x in leaves]  # also JAX's typed Python scalars
    return tuple((a.shape, a.dtype) for a in avals)
