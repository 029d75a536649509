"""PyTorch's return rules for ``backward`` and ``jvp``, checked and normalised.

``backward`` returns one gradient per ``forward`` input: ``None`` allowed, a bare
array for a single input, trailing ``None``\\ s trimmed, a pytree of the input's
structure for a pytree input (a list for a list input).  A gradient is summed over
broadcast dimensions and cast to its input's dtype; a wrong count or shape raises
``RuntimeError`` naming the Function::

    >>> import jax.numpy as jnp
    >>> from custom_vjp.trees import arg_spec
    >>> from jax._src import core
    >>> aval = core.ShapedArray((2,), jnp.float32)
    >>> [g.shape for g in normalize_grads("FBackward", [arg_spec(jnp.ones(2))],
    ...                                   (jnp.ones((3, 2)), None), [aval])]
    [(2,)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core

from custom_vjp._lin import vary_to, vma_of, zeros_of
from custom_vjp.trees import DYN, ArgSpec, OutSpec, is_array, is_float, is_none_or_array

__all__ = [
    "backward_name",
    "fit_grad",
    "fit_vma",
    "function_name",
    "normalize_grads",
    "normalize_tangents",
]


def function_name(cls: type) -> str:
    """The name a Function goes by in messages (``_custom_vjp_name`` or the class name)."""
    return getattr(cls, "_custom_vjp_name", None) or cls.__name__


def backward_name(cls: type) -> str:
    """The name of a Function's backward in messages, as PyTorch prints it (``FooBackward``)."""
    override = getattr(cls, "_custom_vjp_name", None)
    return f"{override} (backward)" if override else f"{cls.__name__}Backward"


def fit_vma(g: Any, aval: core.ShapedArray, who: str, what: str, index: int) -> Any:
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


def fit_grad(who: str, index: int, g: Any, aval: core.ShapedArray) -> Any:
    """Check one gradient's shape (summing broadcast dims as PyTorch) and cast its dtype.

    ``who`` is the backward's name as in messages; ``index`` the input position.
    """
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
                f"Function {who} returned an invalid gradient at index {index} - "
                f"got {list(shape)} but expected shape compatible with {list(want)}"
            )
        lead = len(shape) - len(want)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(want) if n == 1 and shape[lead + i] != 1
        )
        g = jnp.sum(g, axis=axes, keepdims=False).reshape(want)
    if is_float(aval.dtype) and g.dtype != aval.dtype:
        g = g.astype(aval.dtype)
    return fit_vma(g, aval, f"Function {who}", "gradient", index)


def _sequence_type(spec: ArgSpec) -> type | None:
    data = spec.tree.node_data()
    return data[0] if data is not None and data[0] in (list, tuple) else None


def _pytree_grad(who: str, i: int, name: str, spec: ArgSpec, g: Any) -> list[Any]:
    """The gradient leaves of pytree input ``i`` (one per leaf of the input, ``None`` allowed)."""
    seq = _sequence_type(spec)
    if seq is not None and isinstance(g, (list, tuple)):
        if len(g) != len(spec.tree.children()):
            raise RuntimeError(
                f"function {who} returned an incorrect number of gradients for list input {i} "
                f"(expected a list of {len(spec.tree.children())}, got {len(g)})"
            )
        g = seq(g)
    leaves, tree = jax.tree_util.tree_flatten(g, is_leaf=is_none_or_array)
    if tree != spec.tree:
        raise RuntimeError(
            f"function {who} returned a gradient for input {i}{name} whose structure does not match "
            f"the input: expected {spec.tree} (or None), got {tree}"
        )
    for k, (s, v) in enumerate(zip(spec.static, leaves)):
        if s is not DYN and is_array(v):
            raise RuntimeError(
                f"function {who} returned a gradient different than None at position {i} "
                f"(leaf {k} of input{name}), but the corresponding forward input leaf was not an "
                "array"
            )
    return [v for s, v in zip(spec.static, leaves) if s is DYN]


def normalize_grads(
    who: str,
    specs: Sequence[ArgSpec],
    grads: Any,
    in_avals: Sequence[core.ShapedArray],
    param_names: Sequence[str] = (),
) -> list[Any]:
    """Apply PyTorch's return rules to ``backward``'s result; one entry per array leaf.

    ``who`` is the backward's name in messages (:func:`backward_name`);
    ``param_names`` are ``forward``'s parameter names, used in messages when known.
    """
    n = len(specs)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) > n and all(g is None for g in grads[n:]):
        grads = grads[:n]
    if len(grads) != n:
        raise RuntimeError(
            f"function {who} returned an incorrect number of gradients "
            f"(expected {n}, got {len(grads)})"
        )
    flat: list[Any] = []
    pos = 0
    for i, (s, g) in enumerate(zip(specs, grads)):
        if not s.n:
            if g is not None:
                raise RuntimeError(
                    f"function {who} returned a gradient different than None "
                    f"at position {i}, but the corresponding forward input was not an array"
                )
        elif g is None:
            flat.extend([None] * s.n)
        elif s.is_bare_array:
            flat.append(fit_grad(who, i, g, in_avals[pos]))
        else:
            name = f" ({param_names[i]!r})" if i < len(param_names) else ""
            leaves = _pytree_grad(who, i, name, s, g)
            flat.extend(fit_grad(who, i, e, in_avals[pos + k]) for k, e in enumerate(leaves))
        pos += s.n
    return flat


def normalize_tangents(
    name: str,
    spec: OutSpec,
    out_t: Any,
    out_avals: Sequence[core.ShapedArray],
    diff: Sequence[bool],
) -> list[Any]:
    """Check ``jvp``'s result against ``forward``'s outputs; one tangent per differentiable leaf.

    ``None`` (or a missing trailing leaf) is a zero tangent; a tangent is cast to its
    output's dtype; a wrong count or shape raises ``RuntimeError`` naming ``name``.
    """
    tops = out_t if spec.is_tuple and isinstance(out_t, tuple) else (out_t,)
    if len(tops) != len(spec.top_counts):
        raise RuntimeError(
            f"function {name}.jvp returned an incorrect number of tangents "
            f"(expected {len(spec.top_counts)}, got {len(tops)})"
        )
    leaves: list[Any] = []
    for top, n in zip(tops, spec.top_counts):
        got = jax.tree_util.tree_leaves(top, is_leaf=is_none_or_array) if top is not None else []
        got = got + [None] * (n - len(got)) if len(got) < n else got
        leaves.extend(got[:n])
    dyn_t = [t for t, s in zip(leaves, spec.static) if s is DYN]
    outs = []
    for k, (t, a, d) in enumerate(zip(dyn_t, out_avals, diff)):
        if not d:
            continue
        if t is None:
            outs.append(zeros_of(a))
            continue
        t = jnp.asarray(t)
        if tuple(t.shape) != tuple(a.shape):
            raise RuntimeError(
                f"Function {name}.jvp returned an invalid tangent at index {k} - "
                f"got {list(t.shape)} but expected shape compatible with {list(a.shape)}"
            )
        outs.append(fit_vma(t.astype(a.dtype), a, f"Function {name}.jvp", "tangent", k))
    return outs
