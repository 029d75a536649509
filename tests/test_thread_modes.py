"""Modes and recording are scoped to the thread / context that set them (issue 16.5).

``with autograd_fallback_mode(...)`` and ``record_op_profiles()`` in one thread
must not change what another thread's ``jax.grad`` does or records;
``set_autograd_fallback_mode`` stays global (the default of every thread).
"""

from __future__ import annotations

import contextvars
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


def _host_op(name: str):
    @jaxops.custom_op(f"threadmodes::{name}", mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return np.sin(x)

    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    return op


def _run_in_thread(fn):
    """Run ``fn`` in a new thread; return its result or re-raise its exception."""
    box: dict[str, object] = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


def _thread_keeping_errors(fn, seen):
    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test after join
            seen["error"] = e

    return threading.Thread(target=target)


def test_fallback_mode_of_one_thread_does_not_reach_another():
    op = _host_op("a")
    x = jnp.ones(3)
    entered, done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def other():
        with jaxops.autograd_fallback_mode("error"):
            seen["mode"] = jaxops.get_autograd_fallback_mode()
            entered.set()
            done.wait(timeout=120)
            with pytest.raises(RuntimeError, match="no autograd formula"):
                jax.grad(lambda v: jnp.sum(op(v)))(x)

    t = _thread_keeping_errors(other, seen)
    t.start()
    assert entered.wait(timeout=120)
    try:
        assert jaxops.get_autograd_fallback_mode() == "warn"
        with pytest.warns(UserWarning, match="an autograd kernel was not registered"):
            g = jax.grad(lambda v: jnp.sum(op(v)))(x)
        np.testing.assert_allclose(g, 0.0)
    finally:
        done.set()
        t.join(timeout=120)
    if "error" in seen:
        raise seen["error"]  # type: ignore[misc]
    assert seen["mode"] == "error"


def test_a_jitted_step_retraces_per_thread_mode_and_keeps_its_cache():
    op = _host_op("b")
    x = jnp.ones(3)

    @jax.jit
    def threadmodes_step(v):
        return jax.grad(lambda u: jnp.sum(op(u)))(v)

    with pytest.warns(UserWarning, match="an autograd kernel was not registered"):
        threadmodes_step(x)

    def in_error_mode():
        with jaxops.autograd_fallback_mode("error"):
            threadmodes_step(x)

    with pytest.raises(RuntimeError, match="no autograd formula"):
        _run_in_thread(in_error_mode)
    with jaxops.compile_counter() as c, warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(threadmodes_step(x), 0.0)  # this thread: cached, no warning, no error
        _run_in_thread(lambda: threadmodes_step(x))  # a thread with no mode of its own: the global one
    assert c.traces["threadmodes_step"] == 0


def test_global_setter_is_the_default_of_every_thread():
    try:
        jaxops.set_autograd_fallback_mode("nothing")
        assert _run_in_thread(jaxops.get_autograd_fallback_mode) == "nothing"
        with jaxops.autograd_fallback_mode("error"):
            assert _run_in_thread(jaxops.get_autograd_fallback_mode) == "nothing"
            assert jaxops.get_autograd_fallback_mode() == "error"
        assert jaxops.get_autograd_fallback_mode() == "nothing"
    finally:
        jaxops.set_autograd_fallback_mode("warn")
    assert _run_in_thread(jaxops.get_autograd_fallback_mode) == "warn"
    with pytest.raises(ValueError, match="autograd fallback mode must be one of"):
        with jaxops.autograd_fallback_mode("loud"):
            pass


def test_mode_set_in_a_context_stays_in_it():
    def inner():
        with jaxops.autograd_fallback_mode("nothing"):
            return jaxops.get_autograd_fallback_mode()

    assert contextvars.copy_context().run(inner) == "nothing"
    assert jaxops.get_autograd_fallback_mode() == "warn"


def test_recording_sees_only_its_own_thread():
    op = _host_op("c")
    entered, called, done = threading.Event(), threading.Event(), threading.Event()
    box: dict[str, object] = {}

    def recorder():
        with jaxops.record_op_profiles() as profiles:
            entered.set()
            called.wait(timeout=120)
            op(np.ones(5, np.float32))
        box["profiles"] = profiles
        done.set()

    t = threading.Thread(target=recorder)
    t.start()
    assert entered.wait(timeout=120)
    op(np.ones((2, 3), np.float32))  # this thread records nothing and is not recorded
    called.set()
    t.join(timeout=120)
    assert done.is_set()
    (prof,) = box["profiles"]["threadmodes::c"]  # type: ignore[index]
    assert prof.args_profile[0].rank == 1
    assert jaxops.profile_fakes._RECORDING is False


def test_served_profiles_are_per_thread():
    op = _host_op("d")
    with jaxops.record_op_profiles() as profiles:
        op(np.ones((4, 3), np.float32))
    entered, done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def server():
        with jaxops.unsafe_generate_fake_kernels(profiles):
            entered.set()
            done.wait(timeout=120)
            with pytest.raises(jaxops.MissingOpProfile, match="threadmodes::d"):
                jax.eval_shape(op, jax.ShapeDtypeStruct((7,), jnp.float32))

    t = _thread_keeping_errors(server, seen)
    t.start()
    assert entered.wait(timeout=120)
    try:  # the registered fake still serves this thread
        assert jax.eval_shape(op, jax.ShapeDtypeStruct((7,), jnp.float32)).shape == (7,)
    finally:
        done.set()
        t.join(timeout=120)
    if "error" in seen:
        raise seen["error"]  # type: ignore[misc]
