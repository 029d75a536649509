"""``jaxops demo``: an end-to-end tour on the CPU, in functions you can import.

The tour (``run()``; each step is its own function):

1. :func:`define_ops` declares one op of each kind in the ``tour`` namespace:

   * ``tour::linear``: a traceable JAX body (JAX derives its fake, gradient, batching);
   * ``tour::gelu``: a host NumPy body with a fake, a ``register_autograd`` backward
     written in JAX, and a ``register_vmap`` rule (a batch goes to NumPy in one call);
   * ``tour::softmax_xent``: a traceable fused loss with a ``register_autograd``
     backward (``softmax - onehot``) and a non-differentiable integer input;
   * ``tour::num_correct``: a host NumPy metric with a fake (an integer count, so
     no gradient is needed);
   * ``Tanh``: a ``custom_vjp.Function`` (``torch.autograd.Function`` style).

2. :func:`plan_model` plans the MLP's loss and its gradient by shape alone, with
   a symbolic batch ``b`` (``jaxops.plan``): nothing is compiled or run.
3. :func:`train` trains it with plain SGD in a jitted ``jax.value_and_grad``
   step, with a ``tqdm`` progress bar, under ``jaxops.compile_counter()``.
4. :func:`per_example_grads` takes per-example gradients with ``jax.vmap`` of
   ``jax.grad`` and counts how often the host kernel of ``tour::gelu`` ran.
5. :func:`check_ops` runs ``jaxops.opcheck`` on every op's sample inputs and
   ``custom_vjp.gradcheck`` on the Function.

>>> # from jaxops import demo; result = demo.run(steps=40); result.ok
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DemoOps",
    "DemoResult",
    "check_ops",
    "define_ops",
    "format_summary",
    "init_params",
    "loss_fn",
    "make_data",
    "per_example_grads",
    "plan_model",
    "run",
    "train",
]

#: Layer sizes of the demo MLP: features -> hidden -> hidden -> classes.
SIZES: tuple[int, ...] = (8, 32, 32, 3)
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


@dataclasses.dataclass
class DemoOps:
    """The tour's ops (``CustomOp`` objects), its ``Function`` and the host-call counter."""

    linear: Any
    gelu: Any
    softmax_xent: Any
    num_correct: Any
    tanh: type
    gelu_calls: list[int]

    def all_ops(self) -> list[Any]:
        """The four ``CustomOp`` objects (not the Function)."""
        return [self.linear, self.gelu, self.softmax_xent, self.num_correct]


@dataclasses.dataclass
class DemoResult:
    """What :func:`run` measured; ``ok`` is True when every claim of the summary holds."""

    losses: list[float]
    accuracy_before: float
    accuracy_after: float
    traces: int
    compiles: int
    plan_table: str
    grad_plan_records: int
    vmap_batch: int
    vmap_gelu_calls: int
    opcheck: dict[str, dict[str, Any]]
    gradcheck: Any
    seconds: dict[str, float]

    @property
    def opcheck_ok(self) -> bool:
        """Every opcheck result is ``"SUCCESS"`` and the Function's gradcheck passed."""
        return self.gradcheck is True and all(
            r == "SUCCESS" for checks in self.opcheck.values() for r in checks.values()
        )

    @property
    def ok(self) -> bool:
        """Loss decreased, the step compiled once, the vmap rule batched, all checks passed."""
        return (
            len(self.losses) >= 2
            and self.losses[-1] < self.losses[0]
            and self.compiles == 1
            and self.traces == 1
            and self.vmap_gelu_calls == 1
            and self.opcheck_ok
        )


# ------------------------------------------------------------------------ 1. ops
def _gelu_np(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def _gelu_grad(x: jax.Array) -> jax.Array:
    inner = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
    t = jnp.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)


def define_ops() -> DemoOps:
    """Declare (or re-declare) the tour's ops and register their sample inputs."""
    import jaxops
    from custom_vjp import Function
    from jaxops.samples import register_sample_inputs

    gelu_calls = [0]

    @jaxops.custom_op("tour::linear", mutates_args=())
    def linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        return x @ w + b

    @jaxops.custom_op("tour::gelu", mutates_args=(), host=True)
    def gelu(x: np.ndarray) -> np.ndarray:
        gelu_calls[0] += 1
        return _gelu_np(x).astype(x.dtype)

    @gelu.register_fake
    def _gelu_fake(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    def gelu_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])

    def gelu_backward(ctx: Any, g: jax.Array) -> jax.Array:
        (x,) = ctx.saved_tensors
        return g * _gelu_grad(x)

    gelu.register_autograd(gelu_backward, setup_context=gelu_setup)

    @gelu.register_vmap
    def _gelu_vmap(info: Any, in_dims: tuple[Any, ...], x: jax.Array) -> tuple[jax.Array, Any]:
        # Elementwise: the whole batch goes to NumPy in one host call.
        return gelu(x), in_dims[0]

    @jaxops.custom_op("tour::softmax_xent", mutates_args=())
    def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
        logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
        picked = jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)
        return -jnp.mean(picked)

    def xent_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        logits, labels = inputs
        ctx.save_for_backward(logits, labels)

    def xent_backward(ctx: Any, g: jax.Array) -> tuple[jax.Array, None]:
        logits, labels = ctx.saved_tensors
        onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        return g * (jax.nn.softmax(logits, axis=-1) - onehot) / logits.shape[0], None

    softmax_xent.register_autograd(xent_backward, setup_context=xent_setup)

    @jaxops.custom_op("tour::num_correct", mutates_args=(), host=True)
    def num_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        # An integer count: not differentiable, so no autograd formula is needed.
        return np.asarray(np.sum(np.argmax(logits, axis=-1) == labels), dtype=np.int32)

    @num_correct.register_fake
    def _num_correct_fake(logits: Any, labels: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((), jnp.int32)

    class Tanh(Function):
        """``tanh`` with a backward from the saved output."""

        @staticmethod
        def forward(x: jax.Array) -> jax.Array:
            return jnp.tanh(x)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx: Any, g: jax.Array) -> jax.Array:
            (y,) = ctx.saved_tensors
            return g * (1.0 - y * y)

    def normal(i: int, shape: tuple[int, ...]) -> jax.Array:
        return jnp.asarray(np.random.default_rng(100 + i).standard_normal(shape), jnp.float32)

    # Small samples: opcheck's gradcheck costs one vjp per output element.
    register_sample_inputs(linear, lambda: [(
        (normal(0, (2, 3)), normal(1, (3, 2)), normal(2, (2,))),
        {},
    )])
    register_sample_inputs(gelu, lambda: [((normal(3, (2, 3)),), {})])
    register_sample_inputs(softmax_xent, lambda: [(
        (normal(4, (3, 3)), jnp.array([0, 2, 1], jnp.int32)),
        {},
    )])
    register_sample_inputs(num_correct, lambda: [(
        (normal(5, (4, 3)), jnp.array([0, 1, 2, 1], jnp.int32)),
        {},
    )])
    return DemoOps(linear, gelu, softmax_xent, num_correct, Tanh, gelu_calls)


# ---------------------------------------------------------------------- 2. model
def make_data(seed: int = 0, n: int = 256, sizes: tuple[int, ...] = SIZES) -> tuple[jax.Array, jax.Array]:
    """``n`` points of ``sizes[-1]`` Gaussian blobs in ``sizes[0]`` dimensions: ``(x, labels)``.

    Drawn with NumPy's generator: eager ``jax.random`` calls would each compile.
    """
    d, k = sizes[0], sizes[-1]
    rng = np.random.default_rng(seed)
    centers = 1.2 * rng.standard_normal((k, d))
    labels = rng.integers(0, k, size=n)
    x = centers[labels] + rng.standard_normal((n, d))
    return jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)


def init_params(seed: int = 0, sizes: tuple[int, ...] = SIZES) -> list[tuple[jax.Array, jax.Array]]:
    """``[(w, b), ...]`` per layer, scaled by ``1/sqrt(fan_in)``."""
    rng = np.random.default_rng(seed)
    return [
        (jnp.asarray(rng.standard_normal((m, n)) / np.sqrt(m), jnp.float32), jnp.zeros((n,), jnp.float32))
        for m, n in zip(sizes[:-1], sizes[1:])
    ]


def logits_fn(ops: DemoOps, params: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    """The MLP: linear -> gelu (host op) -> linear -> Tanh (Function) -> linear."""
    (w1, b1), (w2, b2), (w3, b3) = params
    h = ops.gelu(ops.linear(x, w1, b1))
    h = ops.tanh.apply(ops.linear(h, w2, b2))
    return ops.linear(h, w3, b3)


def loss_fn(ops: DemoOps, params: list[tuple[jax.Array, jax.Array]], x: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy through ``tour::softmax_xent``."""
    return ops.softmax_xent(logits_fn(ops, params, x), labels)


def plan_model(ops: DemoOps, sizes: tuple[int, ...] = SIZES) -> tuple[Any, Any]:
    """Plans of the loss and of its gradient with a symbolic batch ``b``: ``(plan, grad_plan)``."""
    import jaxops

    (b,) = jax.export.symbolic_shape("b")
    params = [
        (jax.ShapeDtypeStruct((m, n), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32))
        for m, n in zip(sizes[:-1], sizes[1:])
    ]
    x = jax.ShapeDtypeStruct((b, sizes[0]), jnp.float32)
    labels = jax.ShapeDtypeStruct((b,), jnp.int32)

    def loss(p: Any, x: Any, labels: Any) -> jax.Array:
        return loss_fn(ops, p, x, labels)

    return jaxops.plan(loss, params, x, labels), jaxops.plan(jax.grad(loss), params, x, labels)


# ---------------------------------------------------------------------- 3. train
def train(
    ops: DemoOps,
    params: list[tuple[jax.Array, jax.Array]],
    x: jax.Array,
    labels: jax.Array,
    *,
    steps: int = 40,
    lr: float = 0.3,
    progress: bool = True,
    file: TextIO | None = None,
) -> tuple[list[tuple[jax.Array, jax.Array]], list[float], Any]:
    """Plain SGD in a jitted ``value_and_grad`` step: ``(params, losses, compile_counter)``."""
    from tqdm import tqdm

    import jaxops

    def train_step(p: Any, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, Any]:
        loss, grads = jax.value_and_grad(lambda q: loss_fn(ops, q, x, labels))(p)
        return loss, jax.tree_util.tree_map(lambda w, g: w - lr * g, p, grads)

    step = jax.jit(train_step)
    losses: list[float] = []
    with jaxops.compile_counter() as counter:
        bar = tqdm(range(steps), desc="train", disable=not progress, file=file or sys.stderr, leave=False)
        for _ in bar:
            loss, params = step(params, x, labels)
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
    return params, losses, counter


# ------------------------------------------------------------------------ 4. vmap
def per_example_grads(
    ops: DemoOps, params: list[tuple[jax.Array, jax.Array]], x: jax.Array, labels: jax.Array
) -> tuple[Any, int]:
    """``jax.vmap(jax.grad(loss))`` over examples: ``(grads, gelu host-kernel calls)``.

    With the vmap rule, the host kernel of ``tour::gelu`` runs once for the whole
    batch instead of once per example.
    """

    def one(p: Any, xi: jax.Array, yi: jax.Array) -> jax.Array:
        return loss_fn(ops, p, xi[None], yi[None])

    fn = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))
    compiled = fn.lower(params, x, labels).compile()
    before = ops.gelu_calls[0]
    grads = jax.block_until_ready(compiled(params, x, labels))
    return grads, ops.gelu_calls[0] - before


# ----------------------------------------------------------------------- 5. check
def check_ops(ops: DemoOps) -> tuple[dict[str, dict[str, Any]], Any]:
    """``opcheck`` on every op's sample inputs, ``gradcheck`` on the Function.

    Returns ``({op_name: {check: "SUCCESS" or exception}}, True or exception)``;
    a check counts as passed when it passed on every sample.
    """
    import custom_vjp
    from jaxops.opcheck import opcheck
    from jaxops.samples import sample_inputs

    results: dict[str, dict[str, Any]] = {}
    for op in ops.all_ops():
        merged: dict[str, Any] = {}
        for args, kwargs in sample_inputs(op):
            for name, r in opcheck(op, args, kwargs, raise_exception=False).items():
                if merged.get(name, "SUCCESS") == "SUCCESS":
                    merged[name] = r
        results[op.name] = merged
    try:
        grad_ok: Any = custom_vjp.gradcheck(ops.tanh.apply, (jnp.linspace(-2.0, 2.0, 12).reshape(3, 4),))
    except Exception as e:  # noqa: BLE001 - reported in the summary
        grad_ok = e
    return results, grad_ok


# ------------------------------------------------------------------------- run
def _accuracy(ops: DemoOps, params: Any, x: jax.Array, labels: jax.Array) -> float:
    # Eager: each op runs its own cached kernel, the host op runs NumPy directly.
    return int(ops.num_correct(logits_fn(ops, params, x), labels)) / x.shape[0]


def run(*, steps: int = 40, progress: bool = True, out: TextIO | None = None, seed: int = 0) -> DemoResult:
    """The whole tour; prints each stage and the summary to ``out`` (default stdout)."""
    stream = sys.stdout if out is None else out
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    t = time.perf_counter()
    ops = define_ops()
    seconds["define"] = time.perf_counter() - t
    say("== 1. ops ==")
    from jaxops.describe import describe_op

    for op in ops.all_ops():
        d = describe_op(op)
        say(f"{d['name']}{d['schema']}")
        say(f"    kernels {d['kernels']}; fake {d['fake'].split(' (')[0]}; "
            f"autograd {d['autograd'].split(' (')[0]}; vmap {d['vmap'].split(' (')[0]}")
    say(f"custom_vjp.Function {ops.tanh.__name__} (forward / setup_context / backward)")

    t = time.perf_counter()
    the_plan, grad_plan = plan_model(ops)
    seconds["plan"] = time.perf_counter() - t
    say()
    say("== 2. plan of the loss, by shape (symbolic batch b) ==")
    plan_table = str(the_plan)
    say(plan_table)
    summary = getattr(the_plan, "summary", None)
    if callable(summary):
        say(summary())
    say(f"jax.grad(loss) plans to {len(grad_plan.records)} op calls (forward + backward), "
        f"flops {grad_plan.totals['flops']}")

    x, labels = make_data(seed)
    params = init_params(seed + 1)
    acc_before = _accuracy(ops, params, x, labels)
    t = time.perf_counter()
    params, losses, counter = train(ops, params, x, labels, steps=steps, progress=progress)
    seconds["train"] = time.perf_counter() - t
    acc_after = _accuracy(ops, params, x, labels)
    say()
    say(f"== 3. training: {steps} SGD steps, batch {x.shape[0]} ==")
    say(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; accuracy {acc_before:.2f} -> {acc_after:.2f}")
    say(f"train_step traced {counter.traces['train_step']}x, compiled {counter.compiles['train_step']}x")

    t = time.perf_counter()
    n_vmap = 16
    _, calls = per_example_grads(ops, params, x[:n_vmap], labels[:n_vmap])
    seconds["vmap"] = time.perf_counter() - t
    say()
    say("== 4. per-example gradients: jax.vmap(jax.grad(loss)) ==")
    say(f"batch {n_vmap}: the tour::gelu host kernel ran {calls}x (its vmap rule batches the call)")

    t = time.perf_counter()
    checks, grad_ok = check_ops(ops)
    seconds["opcheck"] = time.perf_counter() - t
    say()
    say("== 5. opcheck ==")
    for name, res in checks.items():
        bad = [c for c, r in res.items() if r != "SUCCESS"]
        status = "all SUCCESS" if not bad else "FAILED " + ", ".join(bad)
        say(f"{name:<20} {len(res)} checks: {status}")
        for c in bad:
            say(f"    {c}: {str(res[c]).splitlines()[0]}")
    say(f"{'Tanh (Function)':<20} gradcheck: {'SUCCESS' if grad_ok is True else grad_ok}")
    seconds["total"] = time.perf_counter() - t_all

    result = DemoResult(
        losses=losses,
        accuracy_before=acc_before,
        accuracy_after=acc_after,
        traces=counter.traces["train_step"],
        compiles=counter.compiles["train_step"],
        plan_table=plan_table,
        grad_plan_records=len(grad_plan.records),
        vmap_batch=n_vmap,
        vmap_gelu_calls=calls,
        opcheck=checks,
        gradcheck=grad_ok,
        seconds=seconds,
    )
    say()
    say(format_summary(result))
    return result


def format_summary(result: DemoResult) -> str:
    """The summary block printed at the end of :func:`run`."""
    n_checks = sum(len(c) for c in result.opcheck.values())
    n_ok = sum(1 for c in result.opcheck.values() for r in c.values() if r == "SUCCESS")
    lines = [
        "== summary ==",
        f"loss decreased: {result.losses[0]:.4f} -> {result.losses[-1]:.4f} "
        f"({'yes' if result.losses[-1] < result.losses[0] else 'NO'})",
        f"accuracy: {result.accuracy_before:.2f} -> {result.accuracy_after:.2f}",
        f"compiled once: traces={result.traces} compiles={result.compiles} "
        f"({'yes' if result.traces == 1 and result.compiles == 1 else 'NO'})",
        f"vmap rule: {result.vmap_gelu_calls} host call(s) for a batch of {result.vmap_batch}",
        f"opcheck: {n_ok}/{n_checks} SUCCESS; Function gradcheck: "
        f"{'SUCCESS' if result.gradcheck is True else 'FAILED'}",
        f"time: {result.seconds.get('total', 0.0):.1f} s "
        f"(plan {result.seconds.get('plan', 0.0):.2f} s, train {result.seconds.get('train', 0.0):.1f} s, "
        f"opcheck {result.seconds.get('opcheck', 0.0):.1f} s)",
        "demo OK" if result.ok else "demo FAILED",
    ]
    return "\n".join(lines)

