"""jaxops.definition: OpDefinition's set_* verbs validate, store and signal; the facade reads through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops import registry
from jaxops.definition import OpDefinition
from jaxops.schema import parse_schema


def _definition(name: str = "t_def::neg") -> OpDefinition:
    return OpDefinition(name, parse_schema("(Tensor x, float alpha=1.0) -> Tensor"), where="here:1")


def test_every_verb_stores_bumps_the_epoch_empties_caches_and_tells_subscribers():
    d = _definition()
    told: list[int] = []
    d.subscribe(lambda: told.append(1))
    verbs = [
        lambda: d.set_kernel(None, lambda x, alpha=1.0: -x, host=False, where="k:1"),
        lambda: d.add_kernel("cpu", lambda x, alpha=1.0: -2 * x, host=False, where="k:2"),
        lambda: d.set_fake(lambda x, alpha=1.0: x, "f:1"),
        lambda: d.set_autograd(lambda ctx, g: -g, None, "a:1"),
        lambda: d.set_vmap_rule(lambda info, in_dims, x, alpha=1.0: (x, in_dims[0])),
        lambda: d.set_sharding_rule("n -> n"),
        lambda: d.clear_fake(),
    ]
    for i, verb in enumerate(verbs, 1):
        d.cache["fake"] = {"stale": 1}
        before = registry.registrations()
        verb()
        assert registry.registrations() != before  # signalled (traces that used the op are dropped)
        assert d.cache == {}
        assert len(told) == i
    assert d.fake is None and d.autograd is not None and d.autograd.where == "a:1"
    assert d.sharding_rule == "n -> n" and d.vmap_rule is not None
    assert [k for k, _ in d.kernels.items()] == ["default", "cpu"]


def test_verbs_validate_and_name_the_op():
    d = _definition("t_def::v")
    with pytest.raises(TypeError, match=r"t_def::v: register_autograd expects a callable backward, got int"):
        d.set_autograd(3, None, "x")
    with pytest.raises(TypeError, match=r"t_def::v: setup_context must take \(ctx, inputs, output\)"):
        d.set_autograd(lambda ctx, g: g, lambda ctx: None, "x")
    with pytest.raises(TypeError, match=r"t_def::v: register_vmap expects a callable rule, got str"):
        d.set_vmap_rule("rule")
    with pytest.raises(TypeError, match=r"t_def::v: register_fake expects a callable, got NoneType"):
        d.set_fake(None, "x")
    d.set_fake(lambda x, alpha=1.0: x, "first.py:3")
    with pytest.raises(RuntimeError, match=r"t_def::v: a fake \(register_fake\) is already registered at first.py:3"):
        d.set_fake(lambda x, alpha=1.0: x, "second.py:4")
    d.set_kernel(None, lambda x, alpha=1.0: np.asarray(x), host=True, where="k")
    with pytest.raises(ValueError, match=r"t_def::v: register_sharding needs traceable kernels"):
        d.set_sharding_rule("n -> n")
    with pytest.raises(ValueError, match=r"t_def::bad: vmap_method must be one of"):
        OpDefinition("t_def::bad", parse_schema("(Tensor x) -> Tensor"), vmap_method="loop")


def test_a_registration_rebuilds_the_ops_pipeline():
    @jaxops.custom_op("t_def::scale", mutates_args=())
    def scale(x: jax.Array) -> jax.Array:
        return 2 * x

    x = jnp.arange(3.0)
    f = jax.jit(scale)
    np.testing.assert_allclose(f(x), 2 * x)
    scale.register_kernel(None, lambda x: 3 * x)
    np.testing.assert_allclose(scale(x), 3 * x)
    np.testing.assert_allclose(f(x), 3 * x)  # a function jitted before the registration retraces
    assert "test_definition.py:" in scale.definition.kernels.items()[0][1].where  # the user's line
