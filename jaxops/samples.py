"""Sample inputs for ops: the inputs :func:`jaxops.opcheck` and the generated tests run.

A sample-input function takes no arguments and returns a list of ``(args, kwargs)``
tuples, each one a valid call of the op.  Samples are keyed by the op's qualified
name, so they survive re-running ``custom_op`` (notebook cells) and can be
registered before the op itself exists.

>>> import jax, jax.numpy as jnp, jaxops
>>> from jaxops.samples import register_sample_inputs, sample_inputs
>>> @jaxops.custom_op("samplesdoc::twice", mutates_args=())
... def twice(x: jax.Array) -> jax.Array:
...     return 2 * x
>>> @register_sample_inputs(twice)
... def _():
...     return [((jnp.ones(3),), {}), ((jnp.arange(4.0),), {})]
>>> len(sample_inputs("samplesdoc::twice"))
2
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from jaxops import registry as _registry

SampleFn = Callable[[], Iterable[tuple[Any, ...]]]

_SAMPLES: dict[str, SampleFn] = {}


def _key(op_or_name: Any) -> str:
    """The registry key of an op, an ``OpOverloadPacket`` or a name (``"ns::op"``)."""
    from jaxops.op import CustomOp

    if isinstance(op_or_name, CustomOp):
        return op_or_name.name
    if isinstance(op_or_name, _registry.OpOverloadPacket):
        return op_or_name.default.name
    if isinstance(op_or_name, str):
        if "::" not in op_or_name:
            raise ValueError(
                f"sample inputs: {op_or_name!r} is not a qualified op name; use 'namespace::opname'"
            )
        return op_or_name[: -len(".default")] if op_or_name.endswith(".default") else op_or_name
    raise TypeError(
        f"sample inputs: expected an op or a qualified op name 'ns::name', got {type(op_or_name).__name__}"
    )


def _normalize(name: str, raw: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Check and normalize what a sample-input function returned."""
    if raw is None:
        return []
    out: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"{name}: sample input {i} must be an (args, kwargs) pair, e.g. ((x, y), {{}}), "
                f"got {type(item).__name__}"
            )
        args, kwargs = item
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{name}: sample input {i}: args must be a tuple, got {type(args).__name__}")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise TypeError(f"{name}: sample input {i}: kwargs must be a dict, got {type(kwargs).__name__}")
        out.append((tuple(args), dict(kwargs)))
    return out


def register_sample_inputs(op_or_name: Any, fn: SampleFn | None = None) -> Any:
    """Register ``fn`` (no arguments, returns ``[(args, kwargs), ...]``) as the op's samples.

    Usable as a decorator or called directly; registering again replaces the previous
    function.  Returns ``fn`` (so the decorated name stays usable).

    >>> import jax.numpy as jnp
    >>> from jaxops.samples import register_sample_inputs, sample_inputs
    >>> _ = register_sample_inputs("samplesdoc::direct", lambda: [((jnp.ones(2),), {})])
    >>> sample_inputs("samplesdoc::direct")[0][1]
    {}
    """
    key = _key(op_or_name)

    def inner(f: SampleFn) -> SampleFn:
        if not callable(f):
            raise TypeError(f"{key}: register_sample_inputs needs a callable, got {type(f).__name__}")
        _SAMPLES[key] = f
        return f

    return inner if fn is None else inner(fn)


def sample_inputs(op_or_name: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The op's sample inputs as a list of ``(args, kwargs)``; ``[]`` when none are registered.

    >>> from jaxops.samples import sample_inputs
    >>> sample_inputs("samplesdoc::nothing_registered")
    []
    """
    key = _key(op_or_name)
    fn = _SAMPLES.get(key)
    if fn is None:
        return []
    return _normalize(key, fn())


def has_sample_inputs(op_or_name: Any) -> bool:
    """Whether sample inputs are registered for the op.

    >>> from jaxops.samples import has_sample_inputs
    >>> has_sample_inputs("samplesdoc::nothing_registered")
    False
    """
    return _key(op_or_name) in _SAMPLES


def unregister_sample_inputs(op_or_name: Any) -> None:
    """Forget the op's sample inputs (no error when there were none).

    >>> from jaxops.samples import unregister_sample_inputs
    >>> unregister_sample_inputs("samplesdoc::nothing_registered")
    """
    _SAMPLES.pop(_key(op_or_name), None)


def ops_with_samples(namespaces: str | Iterable[str] | None = None) -> list[Any]:
    """The registered ops (``CustomOp`` objects) that have sample inputs, sorted by name.

    ``namespaces`` restricts the result to those namespaces (a string or an iterable).

    >>> from jaxops.samples import ops_with_samples
    >>> [op.name for op in ops_with_samples("samplesdoc")]
    ['samplesdoc::twice']
    """
    if isinstance(namespaces, str):
        wanted: set[str] | None = {namespaces}
    elif namespaces is None:
        wanted = None
    else:
        wanted = set(namespaces)
    found = []
    for op in _registry.all_ops():
        if wanted is not None and op.namespace not in wanted:
            continue
        if op.name in _SAMPLES:
            found.append(op)
    return sorted(found, key=lambda o: o.name)


__all__ = [
    "has_sample_inputs",
    "ops_with_samples",
    "register_sample_inputs",
    "sample_inputs",
    "unregister_sample_inputs",
]
