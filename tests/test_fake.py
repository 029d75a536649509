"""`jaxops.fake`: fakes, their outputs, and what needs one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


def _host_double(name: str):
    @jaxops.custom_op(name, mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return x * 2

    return op


def test_host_fake_returning_none_for_a_tensor_output_raises():
    op = _host_double("w2v::fnone")
    op.register_fake(lambda x: None)
    with pytest.raises(RuntimeError, match=r"w2v::fnone.*fake.*None"):
        jax.jit(op)(jnp.ones(3))


def test_python_numbers_from_a_fake_follow_x64():
    @jaxops.custom_op("w2v::nfake", mutates_args=(), host=True)
    def n(x: jax.Array) -> jax.Array:
        return np.asarray(x.shape[0])

    n.register_fake(lambda x: 3)
    with jax.enable_x64(True):
        eager = jnp.asarray(n(jnp.ones(3)))
        traced = jax.jit(n)(jnp.ones(3))
        assert traced.dtype == jnp.int64
        assert eager.dtype == traced.dtype
        assert jax.eval_shape(n, jnp.ones(3)).dtype == jnp.int64
    assert jax.jit(n)(jnp.ones(3)).dtype == jnp.int32


def test_eager_transforms_of_a_host_op_need_a_fake_and_say_so():
    op = _host_double("w2v::nofake")
    for transform in (
        lambda: jax.grad(lambda v: op(v).sum())(jnp.ones(2)),
        lambda: jax.vjp(op, jnp.ones(2)),
        lambda: jax.vmap(op)(jnp.ones((2, 2))),
    ):
        with pytest.raises(RuntimeError, match=r"w2v::nofake: there is no fake impl registered.*register_fake"):
            transform()
    np.testing.assert_allclose(op(jnp.ones(2)), [2.0, 2.0])  # a plain eager call needs none
