"""A data- and tensor-parallel training step built from jaxops ops vs the same step in plain JAX.

Issue 14.  A ``jax.sharding.Mesh`` over every visible device with axes ``("data", "model")``
(the device count factored: model = 2 when it is even, data = the rest) runs one
transformer-style MLP block per step:

* ``rmsnorm``: a **host** op (NumPy) with a ``register_vmap`` rule and a backward, called
  per example through ``jax.vmap`` inside a ``shard_map`` over the data axis, so each device
  normalizes its own rows in one callback;
* ``col_matmul``: a **traceable** op with ``register_autograd`` and a ``register_sharding``
  rule (``"b s d, d f -> b s f"``: column-parallel, batch on "data", F on "model"), so its
  kernel runs on local shards;
* ``Gelu``: a ``custom_vjp.Function`` with a hand-written backward;
* the row-parallel second matmul, the residual and the loss in plain ``jnp``.

The plain-JAX step computes the same thing with ``jax.custom_vjp`` (the same backward formulas)
and ``jax.pure_callback``, and XLA's sharding propagation instead of the rule.
One run prints, for both: the median step time (and the ratio), the collectives in the
compiled HLO (all-gather / all-reduce / reduce-scatter / all-to-all / collective-permute),
the losses of ``--steps`` steps (which must agree), and how often the step compiled.  The
last line is ``RESULT {json}`` for tests and scripts.

    python bench/sharded_step.py                       # every visible device
    python bench/sharded_step.py --small --cpu-devices 4   # 4 forced CPU devices, 2 x 2 mesh

On several GPUs the script sets ``NCCL_NVLS_ENABLE=0`` unless it is already set.

Forced CPU devices: with JAX 0.10.2, a ``jax.pure_callback`` (the host op here, and the
plain step's callback alike) in a program that also runs collectives deadlocked in XLA's
CPU rendezvous ("Termination timeout for all reduce ... only 1 of them arrived") once each
device's callback operand was about 128 KiB (``--batch 16 --seq 32 --dim 128``); at 64 KiB
and below (``--batch 8 --seq 64 --dim 64``, ``--small``) it ran in every one of our runs.  The plain-JAX
step alone hangs the same way, so it is not jaxops's; keep the per-device rows small on CPU.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes (CI on forced CPU devices)")
    p.add_argument("--steps", type=int, default=20, help="training steps whose losses are compared")
    p.add_argument("--timing-steps", type=int, default=None, help="steps timed per variant (default: --steps)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="force this many CPU devices (sets XLA_FLAGS before JAX starts)")
    p.add_argument("--model-axis", type=int, default=None, help="size of the 'model' mesh axis (default 2 if even)")
    p.add_argument("--rtol", type=float, default=1e-5, help="loss agreement tolerance")
    p.add_argument("--row-rule", action="store_true",
                   help="also run a third step whose row-parallel matmul is a jaxops op with a "
                        "register_sharding rule (its contracted, sharded factor is replicated: shows the "
                        "all-gathers that adds)")
    ns = p.parse_args(argv)
    small = dict(batch=8, seq=4, dim=16, hidden=32)
    full = dict(batch=64, seq=128, dim=512, hidden=2048)
    for k, v in (small if ns.small else full).items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    if ns.timing_steps is None:
        ns.timing_steps = ns.steps
    return ns


def _setup_env(ns: argparse.Namespace) -> None:
    """Environment that must be set before JAX initializes its backends."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off on multi-GPU hosts
    if ns.cpu_devices:
        flags = os.environ.get("XLA_FLAGS", "")
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={ns.cpu_devices}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective instructions per kind in an HLO module's text (async pairs counted once).

    >>> count_collectives("%a = f32[4] all-reduce-start(f32[4] %x)\\n%b = f32[4] all-reduce-done(%a)")
    {'all-gather': 0, 'all-reduce': 1, 'reduce-scatter': 0, 'all-to-all': 0, 'collective-permute': 0}
    """
    counts = dict.fromkeys(COLLECTIVES, 0)
    for kind in COLLECTIVES:
        counts[kind] = len(re.findall(rf"\s{kind}(?:-start)?\(", hlo_text))
    return counts


def build(ns: argparse.Namespace) -> dict[str, Any]:
    """The mesh, data, parameters and the two jitted steps (jaxops and plain JAX)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxops
    from custom_vjp import Function

    n = jax.device_count()
    model = ns.model_axis or (2 if n % 2 == 0 else 1)
    if n % model:
        raise SystemExit(f"--model-axis {model} does not divide the {n} devices")
    data = n // model
    if ns.batch % data or ns.hidden % model:
        raise SystemExit(f"batch {ns.batch} must divide by data={data} and hidden {ns.hidden} by model={model}")
    mesh = jax.make_mesh((data, model), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    eps = 1e-6

    # -- the host op: RMS normalization over the last axis, NumPy kernel ----------------------
    def rms_kernel(x: np.ndarray) -> np.ndarray:
        return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)).astype(x.dtype)

    def rms_backward_jax(x: jax.Array, g: jax.Array) -> jax.Array:
        r = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
        return r * g - x * (r**3) * jnp.mean(g * x, axis=-1, keepdims=True)

    @jaxops.custom_op("bench_shard::rmsnorm", mutates_args=(), host=True)
    def rmsnorm(x: jax.Array) -> jax.Array:
        return rms_kernel(np.asarray(x))

    rmsnorm.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))

    def rms_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])

    def rms_bwd(ctx: Any, g: jax.Array) -> jax.Array:
        (x,) = ctx.saved_tensors
        return rms_backward_jax(x, g)

    rmsnorm.register_autograd(rms_bwd, setup_context=rms_setup)
    vmap_rule_calls: list[int] = []

    @rmsnorm.register_vmap
    def _rms_vmap(info: Any, in_dims: tuple[Any, ...], x: jax.Array) -> tuple[jax.Array, int]:
        # The kernel normalizes the last axis whatever the leading ones: one call for the batch.
        vmap_rule_calls.append(info.batch_size)
        return rmsnorm(jnp.moveaxis(x, in_dims[0], 0)), 0

    # -- the traceable op: column-parallel matmul with a sharding rule and a backward -----------
    @jaxops.custom_op("bench_shard::col_matmul", mutates_args=())
    def col_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.einsum("bsd,df->bsf", x, w)

    def mm_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    def mm_bwd(ctx: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, w = ctx.saved_tensors
        return jnp.einsum("bsf,df->bsd", g, w), jnp.einsum("bsd,bsf->df", x, g)

    col_matmul.register_autograd(mm_bwd, setup_context=mm_setup)
    col_matmul.register_sharding("b s d, d f -> b s f")

    # -- the Function: tanh-approximated GELU with a hand-written backward -----------------------
    def gelu_fwd(x: jax.Array) -> jax.Array:
        return 0.5 * x * (1 + jnp.tanh(0.7978845608 * (x + 0.044715 * x**3)))

    def gelu_grad(x: jax.Array, g: jax.Array) -> jax.Array:
        u = 0.7978845608 * (x + 0.044715 * x**3)
        t = jnp.tanh(u)
        du = 0.7978845608 * (1 + 3 * 0.044715 * x * x)
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)

    class Gelu(Function):
        @staticmethod
        def forward(x: jax.Array) -> jax.Array:
            return gelu_fwd(x)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx: Any, g: jax.Array) -> jax.Array:
            (x,) = ctx.saved_tensors
            return gelu_grad(x, g)

    # -- the same pieces in plain JAX ------------------------------------------------------------
    @jax.custom_vjp
    def plain_rms(x: jax.Array) -> jax.Array:
        # pure_callback hands the callback jax.Arrays: convert, or every NumPy call dispatches to JAX.
        return jax.pure_callback(lambda a: rms_kernel(np.asarray(a)), jax.ShapeDtypeStruct(x.shape, x.dtype), x,
                                 vmap_method="expand_dims")

    plain_rms.defvjp(lambda x: (plain_rms(x), x), lambda x, g: (rms_backward_jax(x, g),))

    @jax.custom_vjp
    def plain_col(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.einsum("bsd,df->bsf", x, w)

    def plain_col_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, w = res
        return jnp.einsum("bsf,df->bsd", g, w), jnp.einsum("bsd,bsf->df", x, g)

    # The same backward formula as the op's register_autograd (JAX's own transpose of the einsum
    # picks another dot layout, which would make the comparison about formulas, not jaxops).
    plain_col.defvjp(lambda x, w: (plain_col(x, w), (x, w)), plain_col_bwd)

    @jax.custom_vjp
    def plain_gelu(x: jax.Array) -> jax.Array:
        return gelu_fwd(x)

    plain_gelu.defvjp(lambda x: (gelu_fwd(x), x), lambda x, g: (gelu_grad(x, g),))

    rows = P("data", None, None)

    def plain_matmul(h: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.einsum("bsf,fd->bsd", h, w)

    if ns.row_rule:

        @jaxops.custom_op("bench_shard::row_matmul", mutates_args=())
        def row_matmul(h: jax.Array, w: jax.Array) -> jax.Array:
            return jnp.einsum("bsf,fd->bsd", h, w)

        def row_bwd(ctx: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
            h, w = ctx.saved_tensors
            return jnp.einsum("bsd,fd->bsf", g, w), jnp.einsum("bsf,bsd->fd", h, g)

        # With a backward the forward runs partitioned under value_and_grad (a traceable op
        # without one is differentiated through its plain body, and the rule is not used).
        row_matmul.register_autograd(row_bwd, setup_context=mm_setup)
        row_matmul.register_sharding("b s f, f d -> b s d")

    Fn = Callable[..., jax.Array]

    def block(norm: Fn, mm: Fn, act: Fn, row: Fn, params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        # Host normalization: each device on its own rows, one callback per device.
        h = jax.shard_map(jax.vmap(norm), mesh=mesh, in_specs=rows, out_specs=rows)(x)
        h = act(mm(h, params["w1"]))                           # column-parallel: F on "model"
        return x + row(h, params["w2"])  # row-parallel: all-reduce over "model"

    def make_step(norm: Fn, mm: Fn, act: Fn, row: Fn) -> Callable[..., Any]:
        def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
            return jnp.mean((block(norm, mm, act, row, params, x) - y) ** 2)

        def step(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), loss

        return step

    def jaxops_step(params: Any, x: Any, y: Any) -> Any:
        return make_step(rmsnorm, col_matmul, Gelu.apply, plain_matmul)(params, x, y)

    def row_rule_step(params: Any, x: Any, y: Any) -> Any:
        return make_step(rmsnorm, col_matmul, Gelu.apply, row_matmul)(params, x, y)

    def plain_step(params: Any, x: Any, y: Any) -> Any:
        return make_step(plain_rms, plain_col, plain_gelu, plain_matmul)(params, x, y)

    p_shard = {"w1": NamedSharding(mesh, P(None, "model")), "w2": NamedSharding(mesh, P("model", None))}
    x_shard = NamedSharding(mesh, rows)
    out_shard = (p_shard, NamedSharding(mesh, P()))
    steps = {
        name: jax.jit(fn, in_shardings=(p_shard, x_shard, x_shard), out_shardings=out_shard)
        for name, fn in (("jaxops_step", jaxops_step), ("plain_step", plain_step))
        + ((("row_rule_step", row_rule_step),) if ns.row_rule else ())
    }
    rng = np.random.default_rng(0)
    d, f = ns.dim, ns.hidden
    params = {
        "w1": jax.device_put(jnp.asarray(rng.standard_normal((d, f)) / np.sqrt(d), jnp.float32), p_shard["w1"]),
        "w2": jax.device_put(jnp.asarray(rng.standard_normal((f, d)) / np.sqrt(f), jnp.float32), p_shard["w2"]),
    }
    shape = (ns.batch, ns.seq, d)
    x = jax.device_put(jnp.asarray(rng.standard_normal(shape), jnp.float32), x_shard)
    y = jax.device_put(jnp.asarray(rng.standard_normal(shape), jnp.float32), x_shard)
    return dict(mesh=mesh, steps=steps, params=params, x=x, y=y, vmap_rule_calls=vmap_rule_calls)


def run(ns: argparse.Namespace) -> dict[str, Any]:
    """Losses, compiles, collectives and step times of both steps."""
    import jax
    import numpy as np

    import jaxops

    b = build(ns)
    mesh, x, y = b["mesh"], b["x"], b["y"]
    out: dict[str, Any] = {
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "mesh": dict(mesh.shape),
        "sizes": dict(batch=ns.batch, seq=ns.seq, dim=ns.dim, hidden=ns.hidden),
    }
    state = {}
    for name, step in b["steps"].items():
        params = b["params"]
        losses = []
        with jaxops.compile_counter() as counter:
            for _ in range(ns.steps):
                params, loss = step(params, x, y)
                losses.append(float(loss))
        lowered = step.lower(b["params"], x, y)
        state[name] = params
        out[name] = {
            "losses": losses,
            "compiles": counter.compiles[name],
            "traces": counter.traces[name],
            "collectives": count_collectives(lowered.compile().as_text()),
            # custom_partitioning calls left in the program: the sharding rule at work
            "partitioned_calls": lowered.as_text().count("CustomSPMDPartitioning"),
        }
    # Time the steps interleaved, in alternating order, so load from other work hits all alike.
    times: dict[str, list[float]] = {name: [] for name in b["steps"]}
    names = list(b["steps"])
    for i in range(ns.timing_steps):
        for name in names if i % 2 == 0 else names[::-1]:
            step = b["steps"][name]
            t0 = time.perf_counter()
            state[name], loss = step(state[name], x, y)
            jax.block_until_ready(loss)
            times[name].append(time.perf_counter() - t0)
    for name in b["steps"]:
        out[name]["step_ms"] = statistics.median(times[name]) * 1e3
    j, p_ = out["jaxops_step"], out["plain_step"]
    out["losses_equal"] = bool(np.allclose(j["losses"], p_["losses"], rtol=ns.rtol, atol=1e-7))
    out["max_loss_rel_diff"] = float(
        np.max(np.abs(np.subtract(j["losses"], p_["losses"])) / np.maximum(np.abs(p_["losses"]), 1e-30))
    )
    out["extra_all_gathers"] = j["collectives"]["all-gather"] - p_["collectives"]["all-gather"]
    out["time_ratio"] = j["step_ms"] / p_["step_ms"]
    if "row_rule_step" in out:
        out["row_rule_extra_all_gathers"] = (
            out["row_rule_step"]["collectives"]["all-gather"] - p_["collectives"]["all-gather"]
        )
    out["vmap_rule_used"] = bool(b["vmap_rule_calls"])
    return out


def report(out: dict[str, Any]) -> None:
    """Print the human-readable table and the RESULT line."""
    mesh = " x ".join(f"{k}={v}" for k, v in out["mesh"].items())
    print(f"{out['devices']} {out['platform']} device(s) ({out['device_kind']}), mesh {mesh}, sizes {out['sizes']}")
    print(f"{'step':<14} {'ms/step':>9} {'compiles':>8}  " + "  ".join(f"{c:>18}" for c in COLLECTIVES))
    for name in [n for n in ("jaxops_step", "plain_step", "row_rule_step") if n in out]:
        r = out[name]
        cols = "  ".join(f"{r['collectives'][c]:>18}" for c in COLLECTIVES)
        print(f"{name:<14} {r['step_ms']:>9.3f} {r['compiles']:>8}  {cols}")
    print(f"time ratio jaxops/plain: {out['time_ratio']:.3f}")
    print(f"all-gathers jaxops adds over plain JAX: {out['extra_all_gathers']}; calls partitioned by "
          f"the sharding rule: {out['jaxops_step']['partitioned_calls']}; vmap rule used: {out['vmap_rule_used']}")
    if "row_rule_step" in out:
        print(f"row-parallel matmul with a register_sharding rule (--row-rule) adds "
              f"{out['row_rule_extra_all_gathers']} all-gather(s) over plain JAX")
    print(f"losses equal: {out['losses_equal']} (max relative difference {out['max_loss_rel_diff']:.2e})")
    for k, (a, c) in enumerate(zip(out["jaxops_step"]["losses"], out["plain_step"]["losses"])):
        print(f"  step {k:>2}: jaxops {a:.7f}  plain {c:.7f}")
    print("RESULT " + json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    ns = _parse(argv)
    _setup_env(ns)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    out = run(ns)
    report(out)
    ok = out["losses_equal"] and out["extra_all_gathers"] <= 0
    ok = ok and out["jaxops_step"]["compiles"] == 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
