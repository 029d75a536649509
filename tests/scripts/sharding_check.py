"""Run in a subprocess with 2 virtual CPU devices by tests/test_sharding.py."""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxops  # noqa: E402
from custom_vjp import Function  # noqa: E402

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
# ---------------------------------------------------------------------------------------------
# Custom derivatives under shard_map: values there are typed as varying over the mesh axis
# ({V:d}); tangents, cotangents, zeros and host-callback results must keep that type, and the
# gradient of a replicated input is summed over the mesh (as JAX does for plain code).

ROWS = P("d", None)


def smap(f, in_specs=ROWS):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=ROWS)


def _save_x(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _sin_bwd(ctx, g):
    (a,) = ctx.saved_tensors
    return g * jnp.cos(a)


@jaxops.custom_op("shard_t::hsin", mutates_args=(), host=True)
def hsin(a: jax.Array) -> jax.Array:
    return np.sin(a)


hsin.register_fake(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype))
hsin.register_autograd(_sin_bwd, setup_context=_save_x)


@jaxops.custom_op("shard_t::tsin", mutates_args=())
def tsin(a: jax.Array) -> jax.Array:
    return jnp.sin(a)


tsin.register_autograd(_sin_bwd, setup_context=_save_x)


class FSin(Function):
    @staticmethod
    def forward(a):
        return jnp.sin(a)

    setup_context = staticmethod(_save_x)
    backward = staticmethod(_sin_bwd)


class FSinJvp(FSin):
    @staticmethod
    def jvp(ctx, t):
        (a,) = ctx.saved_tensors
        return t * jnp.cos(a)


class FAffine(Function):
    """Backward returns a gradient that does not vary (a constant) for a varying input."""

    @staticmethod
    def forward(a):
        return 3.0 * a + 1.0

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 3.0 * g


@jaxops.custom_op("shard_t::hnograd", mutates_args=(), host=True)
def hnograd(a: jax.Array) -> jax.Array:
    return np.sin(a)


hnograd.register_fake(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype))

xa = jnp.arange(32.0).reshape(8, 4) / 10
sin_ref = jax.grad(lambda a: jnp.sin(a).sum())(xa)
for label, fn in [("host op", hsin), ("traceable op", tsin), ("Function", FSin.apply),
                  ("Function with jvp", FSinJvp.apply)]:
    loss = lambda a, fn=fn: smap(fn)(a).sum()  # noqa: E731
    for how, g_fn in [("jit(grad)", jax.jit(jax.grad(loss))), ("grad", jax.grad(loss)),
                      ("jit(grad(vmap))", jax.jit(jax.grad(lambda a, fn=fn: smap(jax.vmap(fn))(a).sum()))),
                      ("jit(vmap(grad))", jax.jit(smap(jax.vmap(jax.grad(lambda r, fn=fn: fn(r).sum())))))]:
        np.testing.assert_allclose(g_fn(xa), sin_ref, rtol=1e-5, atol=1e-6, err_msg=f"{label} {how}")
    _, t = jax.jit(lambda a, fn=fn: jax.jvp(smap(fn), (a,), (jnp.ones_like(a),)))(xa)
    np.testing.assert_allclose(t, jnp.cos(xa), rtol=1e-5, atol=1e-6, err_msg=f"{label} jvp")
    jac = jax.jit(smap(jax.vmap(jax.jacfwd(lambda r, fn=fn: fn(r)))))(xa)
    np.testing.assert_allclose(jac, jax.vmap(jnp.diag)(jnp.cos(xa)), rtol=1e-5, atol=1e-6, err_msg=f"{label} jacfwd")
np.testing.assert_allclose(jax.jit(jax.grad(lambda a: smap(FAffine.apply)(a).sum()))(xa),
                           jnp.full_like(xa, 3.0))
_, t = jax.jit(lambda a: jax.jvp(smap(FAffine.apply), (a,), (jnp.ones_like(a),)))(xa)
np.testing.assert_allclose(t, jnp.full_like(xa, 3.0))

# A host op with no formula: zero gradient through it, the rest of the graph unchanged.
with jaxops.autograd_fallback_mode("nothing"):
    g = jax.jit(jax.grad(lambda a: smap(lambda r: hnograd(r) + 2.0 * r)(a).sum()))(xa)
    np.testing.assert_allclose(g, jnp.full_like(xa, 2.0))
    _, t = jax.jit(lambda a: jax.jvp(smap(lambda r: hnograd(r) + 2.0 * r), (a,), (jnp.ones_like(a),)))(xa)
    np.testing.assert_allclose(t, jnp.full_like(xa, 2.0))
    np.testing.assert_allclose(jax.jit(smap(hnograd))(xa), jnp.sin(xa), rtol=1e-6)

# A replicated operand next to a sharded one: its gradient is the sum over the devices.


def _mm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mm_bwd(ctx, g):
    a, b = ctx.saved_tensors
    return g @ b.T, a.T @ g


@jaxops.custom_op("shard_t::hmm", mutates_args=(), host=True)
def hmm(a: jax.Array, b: jax.Array) -> jax.Array:
    return a @ b


hmm.register_fake(lambda a, b: jax.ShapeDtypeStruct((a.shape[0], b.shape[1]), a.dtype))
hmm.register_autograd(_mm_bwd, setup_context=_mm_setup)


@jaxops.custom_op("shard_t::tmm", mutates_args=())
def tmm(a: jax.Array, b: jax.Array) -> jax.Array:
    return a @ b


tmm.register_autograd(_mm_bwd, setup_context=_mm_setup)


class FMm(Function):
    forward = staticmethod(lambda a, b: a @ b)
    setup_context = staticmethod(_mm_setup)
    backward = staticmethod(_mm_bwd)


wa = jnp.arange(24.0).reshape(4, 6) / 10
mm_ref = jax.grad(lambda a, b: jnp.sin(a @ b).sum(), argnums=(0, 1))(xa, wa)
for label, fn in [("host op", hmm), ("traceable op", tmm), ("Function", FMm.apply)]:
    f2 = smap(lambda a, b, fn=fn: jnp.sin(fn(a, b)), in_specs=(P("d", None), P()))
    got = jax.jit(jax.grad(lambda a, b, f2=f2: f2(a, b).sum(), argnums=(0, 1)))(xa, wa)
    for k, (u, v) in enumerate(zip(got, mm_ref)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5, err_msg=f"{label} mm grad {k}")
    _, t = jax.jit(lambda a, b, f2=f2: jax.jvp(f2, (a, b), (jnp.ones_like(a), jnp.ones_like(b))))(xa, wa)
    _, t_ref = jax.jvp(lambda a, b: jnp.sin(a @ b), (xa, wa), (jnp.ones_like(xa), jnp.ones_like(wa)))
    np.testing.assert_allclose(t, t_ref, rtol=1e-5, atol=1e-5, err_msg=f"{label} mm jvp")

# A backward whose gradient varies over the mesh while its input does not (here it closes over
# a sharded value) cannot be fitted silently: an error names the Function.


def closing_over(a, b):
    class Leaky(Function):
        @staticmethod
        def forward(r):
            return r * 2.0

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g * a.sum()

    return Leaky.apply(b) + 0.0 * a


leaky = smap(lambda a, b: closing_over(a, b)[:, :4] * 0 + a, in_specs=(P("d", None), P()))
try:
    jax.jit(jax.grad(lambda a, b: leaky(a, b).sum(), argnums=1))(xa, jnp.ones((4, 4)))
except RuntimeError as e:
    assert "Leaky" in str(e) and "varies over the shard_map mesh axes ['d']" in str(e), e
else:
    raise AssertionError("a gradient varying over the mesh for a replicated input must raise")

# A mutating host op under shard_map: its results vary like its inputs.


@jaxops.custom_op("shard_t::hfill", mutates_args={"out"}, host=True)
def hfill(a: jax.Array, out: jax.Array) -> None:
    out[...] = np.sin(a)


new = jax.jit(smap(lambda a: hfill(a, jnp.zeros_like(a))))(xa)
np.testing.assert_allclose(new, jnp.sin(xa), rtol=1e-6)

print("SHARDING OK")
