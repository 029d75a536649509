"""Stages that nest, on 2 forced CPU devices (run in a subprocess by tests/test_pipeline.py).

vmap rule + sharding rule, and mutation + sharding rule: under jit, grad and
vmap; the jaxpr shows both rules and the kernel runs on local shards.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxops  # noqa: E402

mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
x = jnp.arange(16.0).reshape(2, 8) / 10
xs = jax.device_put(x, NamedSharding(mesh, P(None, "d")))


def kernel_on_shards(f, *args) -> bool:
    """The compiled program runs the op's partitioned kernel on (2, 4) shards, with no collective.

    JAX 0.10 traces the kernel's Python body again for the local shapes; JAX 0.11 partitions
    the kernel's jaxpr it already has, so only the compiled program says where it ran.
    """
    text = jax.jit(f).lower(*args).compile().as_text()
    on_shards = any("custom_partitioning" in line and "f32[2,4]" in line for line in text.splitlines())
    collectives = [c for c in ("all-gather", "all-reduce", "all-to-all", "collective-permute") if c in text]
    return on_shards and not collectives


def rules_in(jaxpr, op) -> set[str]:
    """Which of the op's rules the jaxpr shows: its vmap rule (by name) and a sharding rule."""
    text = str(jaxpr)
    found = set()
    if f"rule=<function {op.name} vmap rule" in text:
        found.add("vmap rule")
    if "custom_partitioning[" in text and "sharding_rule=SdyShardingRule" in text:
        found.add("sharding rule")
    return found


# ---------------------------------------------------------------- vmap rule + sharding rule
rule_batches: list[int] = []
shapes: list[tuple[int, ...]] = []


@jaxops.custom_op("compose2::gelu", mutates_args=())
def gelu(x: jax.Array) -> jax.Array:
    shapes.append(tuple(x.shape))
    return jax.nn.gelu(x)


@gelu.register_vmap
def _(info, in_dims, x):
    rule_batches.append(info.batch_size)
    return gelu(x), in_dims[0]


gelu.register_sharding("... n -> ... n")
ref = jax.nn.gelu(x)

out = jax.jit(gelu)(xs)
np.testing.assert_allclose(out, ref, rtol=1e-6)
assert (2, 4) in shapes, shapes  # the kernel ran on each device's shard
assert out.sharding.spec == P(None, "d"), out.sharding

out = jax.jit(jax.vmap(gelu))(xs)
np.testing.assert_allclose(out, ref, rtol=1e-6)
assert rule_batches == [2], rule_batches  # the vmap rule batched the op ...
assert kernel_on_shards(jax.vmap(gelu), xs)  # ... and its call of the op was partitioned again
assert kernel_on_shards(gelu, xs)
assert rules_in(jax.make_jaxpr(jax.vmap(gelu))(x), gelu) == {"vmap rule", "sharding rule"}
assert rules_in(jax.make_jaxpr(gelu)(x), gelu) == {"vmap rule", "sharding rule"}

gref = jax.grad(lambda v: jax.nn.gelu(v).sum())(x)
g = jax.jit(jax.grad(lambda v: gelu(v).sum()))(xs)
np.testing.assert_allclose(g, gref, rtol=1e-5)
g = jax.jit(jax.vmap(jax.grad(lambda v: gelu(v).sum())))(xs)
np.testing.assert_allclose(g, gref, rtol=1e-5)
g = jax.jit(jax.grad(lambda v: jax.vmap(gelu)(v).sum()))(xs)
np.testing.assert_allclose(g, gref, rtol=1e-5)

# ------------------------------------------------------------- mutation + sharding rule
mshapes: list[tuple[int, ...]] = []


@jaxops.custom_op("compose2::scale_", mutates_args={"x"})
def scale_(x: jax.Array, s: float) -> None:
    mshapes.append(tuple(x.shape))
    x[...] = x[...] * s


scale_.register_sharding("b n -> b n")  # describes what the op returns: the new x
out = jax.jit(lambda v: scale_(v, 3.0))(xs)
np.testing.assert_allclose(out, 3 * x, rtol=1e-6)
assert (2, 4) in mshapes, mshapes
assert out.sharding.spec == P(None, "d"), out.sharding
assert rules_in(jax.make_jaxpr(lambda v: scale_(v, 3.0))(x), scale_) == {"sharding rule"}
np.testing.assert_allclose(jax.jit(jax.grad(lambda v: scale_(v, 3.0).sum()))(xs), jnp.full_like(x, 3.0))
np.testing.assert_allclose(jax.jit(jax.vmap(lambda v: scale_(v, 2.0)))(xs), 2 * x, rtol=1e-6)
ref_ = jax.new_ref(x)
scale_(ref_, 2.0)  # eager: the caller's Ref is written back
np.testing.assert_allclose(ref_[...], 2 * x, rtol=1e-6)

print("OK")
