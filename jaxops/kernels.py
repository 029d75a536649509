"""Running an op's kernels: the innermost traced stage, and the eager host call.

* :func:`stage` is the bottom of every traced pipeline: it picks the kernel for
  the platform being lowered (``KernelTable.select_traced``) and runs it with a
  *kernel runner*, :func:`runner` here (a traceable kernel is called, a host
  kernel goes through ``pure_callback`` with the fake's shapes) or the
  functionalizing one of ``jaxops.mutation``.
* :func:`host_eager` calls a host kernel directly on NumPy arrays (no JAX).

>>> # run = kernels.stage(defn, kernels.runner(defn)); out = run(values)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxops import dispatch, dynamic, fake, hooks, host
from jaxops.definition import OpDefinition

Runner = Callable[[dispatch.Kernel, list[Any]], Any]

_EAGER_FAKE_CHECKS = contextvars.ContextVar("jaxops_eager_fake_checks", default=True)


@contextlib.contextmanager
def eager_fake_checks(enabled: bool) -> Iterator[None]:
    """Turn the check of eager host results against the op's fake on or off in this context.

    ``opcheck`` turns it off to compare fake and kernel itself (with its own messages).

    >>> with eager_fake_checks(False):
    ...     pass
    """
    token = _EAGER_FAKE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _EAGER_FAKE_CHECKS.reset(token)


def _eager_expected(defn: OpDefinition, values: list[Any], np_values: list[Any]) -> list[Any] | None:
    """The fake's output avals for an eager host call (None without a fake); cached per signature.

    Eager results obey the fake as traced ones do (same shapes, same dtypes), and the
    fake runs once per input signature, never once per call.
    """
    f = fake.active_fake(defn)
    if f is None or not _EAGER_FAKE_CHECKS.get():
        return None
    key: list[Any] = [id(f)]
    for p, v in zip(defn.binder.params, np_values):
        if isinstance(v, np.ndarray):
            key.append((v.shape, v.dtype.str))
        elif p.is_array:
            key.append(tuple((a.shape, a.dtype.str) if isinstance(a, np.ndarray) else a for a in v or ()))
        else:
            key.append(tuple(v) if isinstance(v, list) else v)
    cache = defn.cache.setdefault("eager_fake", {})
    try:
        sig: Any = tuple(key)
        hit = cache.get(sig)
    except TypeError:  # an unhashable static value: no cache
        sig, hit = None, None
    if hit is None:
        hit = jax.tree_util.tree_leaves(fake.abstract_eval(defn, values)[0])
        if sig is not None:
            cache[sig] = hit
    return hit
Stage = Callable[[list[Any]], Any]


def host_traced(defn: OpDefinition, kernel: dispatch.Kernel, values: list[Any]) -> Any:
    """A host kernel under tracing: ``pure_callback`` with shapes from the fake."""
    out_shapes, dynamic_sizes = fake.abstract_eval(defn, values)
    if dynamic_sizes:
        return dynamic.data_dependent_call(defn, kernel, values, out_shapes)
    args = defn.leaves(values)

    scalars = set(defn.static_idx)

    def as_kernel_arg(i: int, a: Any) -> Any:
        # a traced scalar parameter reaches the host kernel as a NumPy scalar
        return np.asarray(a)[()] if i in scalars else a

    def body(*np_flat: Any) -> Any:
        return defn.check_outputs(defn.call_kernel(kernel.fn, args.rebuild(np_flat, as_kernel_arg)), host=True)

    return host.pure_callback(defn.name, body, out_shapes, args.leaves, defn.vmap_method)


def runner(defn: OpDefinition) -> Runner:
    """Run one kernel under tracing: traceable kernels are called, host kernels called back."""

    def run(kernel: dispatch.Kernel, values: list[Any]) -> Any:
        if kernel.host:
            return host_traced(defn, kernel, values)
        tracer = hooks.FAKE_TRACER[0]
        if tracer is not None and defn.fake is not None:  # jaxops.plan: the fake stands in for the body
            args = defn.leaves(values)
            return tracer(
                defn, kernel, values, tuple(args.leaves),
                lambda *xs: defn.check_outputs(defn.call_kernel(kernel.fn, args.rebuild(xs))),
            )
        try:
            out = defn.call_kernel(kernel.fn, values)
        except Exception as e:  # noqa: BLE001 - re-raised naming the op
            host.reraise_naming_op(defn.name, e, "the kernel", RuntimeError)
        return defn.check_outputs(out)

    return run


def stage(defn: OpDefinition, run_kernel: Runner) -> Stage:
    """The innermost stage: platform selection (``lax.platform_dependent``) around ``run_kernel``."""

    def run_kernels(values: list[Any]) -> Any:
        args = defn.leaves(values)
        return defn.kernels.select_traced(
            defn.name, lambda kernel, operands: run_kernel(kernel, args.rebuild(operands)), tuple(args.leaves)
        )

    return run_kernels


def host_eager(defn: OpDefinition, kernel: dispatch.Kernel, values: list[Any], leaves: list[Any]) -> Any:
    """Call a host kernel on concrete arrays: NumPy in, JAX arrays (on the inputs' device) out."""
    host.prefetch_to_host(leaves)
    np_values = [
        jax.tree_util.tree_map(host.to_numpy, v) if p.is_array else v
        for p, v in zip(defn.binder.params, values)
    ]
    pos, kw = defn.binder.split_call(np_values)
    out = defn.check_outputs(host.call_kernel_eager(defn.name, kernel.fn, pos, kw), host=True)
    expected = _eager_expected(defn, values, np_values)
    if expected is not None:
        flat, treedef = host.conform_outputs(defn.name, out, expected)
        out = jax.tree_util.tree_unflatten(treedef, flat)
    host.check_no_alias(defn.name, out, np_values)
    return defn.finish_eager(host.place_outputs(out, dispatch.device_of_leaves(leaves)))


__all__ = ["eager_fake_checks", "host_eager", "host_traced", "runner", "stage"]
