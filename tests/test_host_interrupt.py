"""Ctrl-C inside a host kernel reaches the caller as KeyboardInterrupt naming the op (issue 16.6).

JAX turns an exception raised in a callback into a ``JaxRuntimeError``; a
``KeyboardInterrupt`` raised by a host kernel under ``jit`` must still arrive
as ``KeyboardInterrupt`` (on the first, traced call and on cached calls).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


def _interrupting_op(name: str):
    calls = {"n": 0}

    @jaxops.custom_op(f"interrupt::{name}", mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        calls["n"] += 1
        if calls["n"] <= calls.get("interrupt_first", 10**9):
            raise KeyboardInterrupt
        return np.asarray(x) * 2

    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    return op, calls


# The CPU runtime runs a host callback on the calling thread, where the interrupt is re-raised;
# on a GPU it runs on a runtime thread and the interrupt reaches the main thread asynchronously.
@pytest.mark.cpu_only
def test_keyboard_interrupt_under_jit_names_the_op():
    op, _ = _interrupting_op("jit")
    f = jax.jit(lambda v: op(v) + 1)
    for _ in range(3):  # first call (traced, compiled) and cached calls
        with pytest.raises(KeyboardInterrupt, match="interrupt::jit: interrupted inside the host kernel"):
            f(jnp.ones(3))
        assert sys.gettrace() is None


# The CPU runtime runs a host callback on the calling thread, where the interrupt is re-raised;
# on a GPU it runs on a runtime thread and the interrupt reaches the main thread asynchronously.
@pytest.mark.cpu_only
def test_keyboard_interrupt_under_vmap_and_eager():
    op, _ = _interrupting_op("vmap")
    with pytest.raises(KeyboardInterrupt, match="interrupt::vmap"):
        jax.jit(jax.vmap(op))(jnp.ones((2, 3)))
    with pytest.raises(KeyboardInterrupt):
        op(jnp.ones(3))  # eager: the kernel is called directly


# The CPU runtime runs a host callback on the calling thread, where the interrupt is re-raised;
# on a GPU it runs on a runtime thread and the interrupt reaches the main thread asynchronously.
@pytest.mark.cpu_only
def test_process_stays_usable_after_an_interrupt():
    op, calls = _interrupting_op("after")
    calls["interrupt_first"] = 1
    f = jax.jit(lambda v: op(v) + 1)
    with pytest.raises(KeyboardInterrupt, match="interrupt::after"):
        f(jnp.ones(3))
    np.testing.assert_allclose(f(jnp.ones(3)), 3.0)
    assert sys.gettrace() is None


def test_other_kernel_errors_keep_their_runtime_error():
    @jaxops.custom_op("interrupt::fails", mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        raise ValueError("bad input")

    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    with pytest.raises(RuntimeError, match="interrupt::fails: the host kernel raised ValueError: bad input"):
        jax.block_until_ready(jax.jit(op)(jnp.ones(3)))  # on a GPU the error arrives with the result


# The CPU runtime runs a host callback on the calling thread, where the interrupt is re-raised;
# on a GPU it runs on a runtime thread and the interrupt reaches the main thread asynchronously.
@pytest.mark.cpu_only
def test_an_installed_tracer_is_left_alone_and_the_error_names_the_op():
    op, _ = _interrupting_op("traced")
    f = jax.jit(lambda v: op(v) + 1)
    events: list[str] = []

    def tracer(frame, event, arg):
        events.append(event)
        return None

    sys.settrace(tracer)
    try:
        with pytest.raises(RuntimeError, match=r"interrupt::traced: the host kernel was interrupted \(KeyboardInterrupt\)"):
            f(jnp.ones(3))
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert "call" in events
