"""Tests for ``jaxops.monitoring.compile_counter``."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import pytest

from jaxops.monitoring import CompileCounter, compile_counter


def _fresh_step():
    @jax.jit
    def step(x):
        return jnp.sin(x) * 2

    return step


def test_first_call_traces_and_compiles_once():
    step = _fresh_step()
    x = jnp.ones(3)
    with compile_counter() as c:
        step(x)
    assert c.traces["step"] == 1
    assert c.compiles["step"] == 1
    assert c.lowerings["step"] == 1


def test_cache_hit_counts_zero():
    step = _fresh_step()
    x = jnp.ones(3)
    step(x)
    with compile_counter() as c:
        step(x)
        step(x + 1)
    assert c.traces["step"] == 0
    assert c.compiles["step"] == 0


def test_shape_change_retraces():
    step = _fresh_step()
    with compile_counter() as c:
        step(jnp.ones(3))
        step(jnp.ones(3))
        step(jnp.ones(4))
    assert c.traces["step"] == 2
    assert c.compiles["step"] == 2


def test_unseen_names_read_zero_and_other_functions_are_separate():
    step = _fresh_step()

    @jax.jit
    def other(x):
        return x - 1

    with compile_counter() as c:
        step(jnp.ones(2))
        other(jnp.ones(2))
    assert c.traces["never_seen"] == 0
    assert c.traces["other"] == 1
    assert c.traces["step"] == 1


def test_value_and_grad_is_reported_under_the_loss_name():
    def loss_for_counter(w):
        return jnp.sum(w**2)

    step = jax.jit(jax.value_and_grad(loss_for_counter))
    with compile_counter() as c:
        step(jnp.ones(2))
        step(jnp.ones(2))
    assert c.traces["loss_for_counter"] == 1
    assert c.compiles["loss_for_counter"] == 1


def test_events_after_exit_are_not_counted():
    step = _fresh_step()
    with compile_counter() as c:
        pass
    step(jnp.ones(5))
    assert c.traces["step"] == 0
    assert "CompileCounter(" in repr(c)


def test_nested_counters_both_count():
    step = _fresh_step()
    with compile_counter() as outer:
        with compile_counter() as inner:
            step(jnp.ones(6))
        step(jnp.ones(7))
    assert inner.traces["step"] == 1
    assert outer.traces["step"] == 2


def test_reentering_an_active_counter_raises():
    c = CompileCounter()
    with c:
        with pytest.raises(RuntimeError, match="already active"):
            c.__enter__()


def test_counts_from_threads():
    step = _fresh_step()
    with compile_counter() as c:
        t = threading.Thread(target=lambda: step(jnp.ones(8)))
        t.start()
        t.join()
    assert c.traces["step"] == 1
