"""Run in a subprocess with 2 virtual CPU devices by tests/test_sharding.py."""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxops  # noqa: E402

mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
seen_shapes = []


@jaxops.custom_op("shard_t::mm", mutates_args=())
def mm(x: jax.Array, w: jax.Array) -> jax.Array:
    seen_shapes.append(tuple(x.shape))
    return jnp.tanh(x @ w)


x = jnp.arange(32.0).reshape(8, 4) / 10
w = jnp.ones((4, 6)) / 10
ref = jnp.tanh(x @ w)
xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
ws = jax.device_put(w, NamedSharding(mesh, P("d", None)))  # contracted dim sharded

# Without a rule: XLA's propagation decides; the body is traced at the global shape.
np.testing.assert_allclose(jax.jit(mm)(xs, w), ref, rtol=1e-6)
assert seen_shapes[-1] == (8, 4), seen_shapes

mm.register_sharding("b n, n m -> b m")
seen_shapes.clear()
out = jax.jit(mm)(xs, ws)
np.testing.assert_allclose(out, ref, rtol=1e-6)
# With the rule the kernel runs on each device's local shard of the batch.
assert (4, 4) in seen_shapes, seen_shapes
assert out.sharding.spec[0] == "d", out.sharding

np.testing.assert_allclose(mm(x, w), ref, rtol=1e-6)  # eager, unsharded
g = jax.jit(jax.grad(lambda a, b: mm(a, b).sum(), argnums=(0, 1)))(xs, w)
gref = jax.grad(lambda a, b: jnp.tanh(a @ b).sum(), argnums=(0, 1))(x, w)
for a, b in zip(g, gref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(jax.vmap(mm, in_axes=(0, None))(x[None], w)[0], ref, rtol=1e-6)

sm = jax.jit(
    jax.shard_map(lambda a, b: mm(a, b), mesh=mesh, in_specs=(P("d", None), P()), out_specs=P("d", None))
)
np.testing.assert_allclose(sm(xs, w), ref, rtol=1e-6)


@jaxops.custom_op("shard_t::rowsoftmax", mutates_args=())
def rowsoftmax(x: jax.Array) -> jax.Array:
    return jax.nn.softmax(x, axis=-1)


rowsoftmax.register_sharding(lambda shape: " ".join(f"d{i}" for i in range(len(shape))) + " -> " + " ".join(f"d{i}" for i in range(len(shape))))
np.testing.assert_allclose(jax.jit(rowsoftmax)(xs), jax.nn.softmax(x, axis=-1), rtol=1e-6)
print("SHARDING OK")
