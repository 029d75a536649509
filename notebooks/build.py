"""Build the notebooks in ``notebooks/`` from the cell sources below (outputs stripped).

Run ``python notebooks/build.py`` after editing a cell here; never edit the
``.ipynb`` files by hand.  ``tests/test_notebooks.py`` executes the results top to
bottom, and checks that the checked-in files equal what this script writes.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

Cell = tuple[str, str]


def md(text: str) -> Cell:
    """A markdown cell (dedented)."""
    return ("md", textwrap.dedent(text).strip("\n"))


def code(text: str) -> Cell:
    """A code cell (dedented)."""
    return ("code", textwrap.dedent(text).strip("\n"))


QUICKSTART: list[Cell] = [
    md("""
    # jaxops quickstart

    `jaxops` is PyTorch's custom-operator system (`torch.library`) rebuilt for JAX. An *op* is a
    named function with a schema (PyTorch's spelling) and a table of kernels; it works eagerly and
    under `jit`, `grad`, `vmap`, `eval_shape` and friends. This notebook walks through defining ops,
    fakes, autograd, vmap rules and mutation, and ends with `opcheck`.
    """),
    code("""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxtyping import Array, Float

    import jaxops
    """),
    md("""
    ## 1. A traceable op

    The body is ordinary JAX code, so JAX can trace it: no fake, gradient or batching rule is
    needed. The schema is inferred from the annotations.
    """),
    code("""
    @jaxops.custom_op("quick::scale_add", mutates_args=())
    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    x, y = jnp.arange(3.0), jnp.ones(3)
    print(scale_add.schema)
    print(scale_add(x, y, 2.0))
    print(jaxops.ops.quick.scale_add(x, y))          # the same op, looked up by name
    print(jax.jit(jax.grad(lambda x: scale_add(x, y, 3.0).sum()))(x))
    """),
    md("""
    ## 2. A host (NumPy) op and its fake

    `host=True` says the body is not traceable: it gets NumPy arrays. Eagerly it just runs; under
    tracing it runs through a host callback whose output shapes come from the op's **fake**.
    """),
    code("""
    @jaxops.custom_op("quick::np_sin", mutates_args=(), host=True)
    def np_sin(x: np.ndarray) -> np.ndarray:
        return np.sin(x)

    print(np_sin(x))                       # eager: no fake needed
    try:
        jax.jit(np_sin)(x)
    except RuntimeError as e:
        print("RuntimeError:", str(e).split(".")[0])
    """),
    code("""
    @np_sin.register_fake
    def _(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    print(jax.jit(np_sin)(x))
    print(jax.eval_shape(np_sin, jax.ShapeDtypeStruct((2, 5), jnp.float32)))
    """),
    md("""
    ### Fakes from annotations

    Annotate with jaxtyping shapes and the fake is derived for you; calls are shape-checked.
    """),
    code("""
    @jaxops.custom_op("quick::np_matmul", mutates_args=(), host=True)
    def np_matmul(a: Float[Array, "m k"], b: Float[Array, "k n"]) -> Float[Array, "m n"]:
        return a @ b

    print(jax.eval_shape(np_matmul, jax.ShapeDtypeStruct((2, 3), jnp.float32),
                         jax.ShapeDtypeStruct((3, 5), jnp.float32)))
    try:
        np_matmul(jnp.ones((2, 3)), jnp.ones((4, 5)))
    except TypeError as e:
        print("TypeError:", e)
    """),
    md("""
    ### Data-dependent output sizes

    A fake asks for a new size with `jaxops.get_ctx().new_dynamic_size()`. Eagerly the op returns
    its real shape; `jax.eval_shape` shows a symbolic dimension.
    """),
    code("""
    @jaxops.custom_op("quick::nonzero", mutates_args=(), host=True)
    def nonzero(x: np.ndarray) -> np.ndarray:
        return np.nonzero(x)[0].astype(np.int32)

    @nonzero.register_fake
    def _(x):
        return jax.ShapeDtypeStruct((jaxops.get_ctx().new_dynamic_size(),), jnp.int32)

    print(nonzero(jnp.array([0.0, 1.0, 0.0, 2.0])))
    print(jax.eval_shape(nonzero, jax.ShapeDtypeStruct((5,), jnp.float32)))
    """),
    md("""
    ## 3. Autograd: `register_autograd`

    PyTorch's `setup_context` / `backward` pair. `jax.grad` calls your backward; forward mode
    (`jax.jvp`, `jax.hessian`) is derived from it when it is written in JAX.
    """),
    code("""
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * jnp.cos(x)

    np_sin.register_autograd(backward, setup_context=setup_context)

    print(jax.grad(lambda x: np_sin(x).sum())(x))
    print(jax.jit(jax.grad(lambda x: np_sin(x).sum()))(x))
    print(jax.jvp(np_sin, (x,), (jnp.ones(3),))[1])
    print(jnp.cos(x))
    """),
    md("""
    The `torch.autograd.Function` twin lives in `custom_vjp`:
    """),
    code("""
    from custom_vjp import Function

    class Exp(Function):
        @staticmethod
        def forward(x):
            return jnp.exp(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * y

    print(jax.grad(lambda x: Exp.apply(x).sum())(x), jnp.exp(x))
    """),
    md("""
    ## 4. vmap: `register_vmap`

    Without a rule a host op is batched by calling the kernel once per example. A rule
    `fn(info, in_dims, *args) -> (output, out_dims)` can do better: here the whole batch goes to
    NumPy in one call.
    """),
    code("""
    calls = []

    @jaxops.custom_op("quick::np_square", mutates_args=(), host=True)
    def np_square(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return x * x

    np_square.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    batch = jnp.arange(12.0).reshape(4, 3)

    jax.vmap(np_square)(batch)
    print("without a rule:", calls)

    @np_square.register_vmap
    def _(info, in_dims, x):
        return np_square(x), in_dims[0]

    calls.clear()
    print(jax.vmap(np_square)(batch)[1])
    print("with the rule: ", calls, "batch size", 4)
    """),
    md("""
    The per-example fallback is a cliff, so jaxops says when it happens. A stock `eqx.nn.MLP`
    applies its activation with `vmap` over the features: a host activation without a rule runs
    once per *element*. The first time that happens for a batch of 16 or more, jaxops warns (once
    per op) and names the two fixes.
    """),
    code("""
    import warnings

    import equinox as eqx

    @jaxops.custom_op("quick::np_relu", mutates_args=(), host=True)
    def np_relu(x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0).astype(x.dtype)

    np_relu.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    mlp = eqx.nn.MLP(4, 2, 32, depth=1, activation=np_relu, key=jax.random.key(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.vmap(mlp)(jnp.ones((16, 4)))
    print("warning:", str(caught[0].message).split(";")[0].split(". ")[0])

    @np_relu.register_vmap
    def _(info, in_dims, x):
        return np_relu(x), in_dims[0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.vmap(mlp)(jnp.ones((16, 4)))
    print("warnings with a rule:", len(caught))
    """),
    md("""
    ## 5. Mutation

    An op may declare that it mutates an argument (`mutates_args={"out"}`); the kernel writes into
    it. Callers never see an input change: they get the new value back (here the op returns
    `None`, so the call returns the new `out`).
    """),
    code("""
    @jaxops.custom_op("quick::np_add_into", mutates_args={"out"}, host=True)
    def np_add_into(x: np.ndarray, out: np.ndarray) -> None:
        out += x

    np_add_into.register_fake(lambda x, out: None)
    print(np_add_into.schema)
    out = jnp.zeros(3)
    new_out = np_add_into(x, out)
    print("returned:", new_out, " out itself:", out)
    print("under jit:", jax.jit(np_add_into)(x, out))
    """),
    md("""
    ## 6. `opcheck` and "compiled once"

    `jaxops.opcheck` tests the registrations against each other (fake vs kernel, eager vs `jit`,
    vmap rule vs a loop, gradients vs finite differences) and names the one that is wrong.
    """),
    code("""
    print(jaxops.opcheck(np_sin, (x,)))
    """),
    md("""
    `np_square` is a host op with float inputs and outputs but no backward, so `jax.grad` through
    it would silently give zeros (with a warning). `opcheck` says so, and names the fix:
    """),
    code("""
    result = jaxops.opcheck(np_square, (batch,), raise_exception=False)
    failed = {name: r for name, r in result.items() if r != "SUCCESS"}
    for name, err in failed.items():
        print(name, "->", str(err).splitlines()[0])
    """),
    code("""
    np_square.register_autograd(
        lambda ctx, g: 2 * ctx.saved_tensors[0] * g,
        setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
    )
    print(jaxops.opcheck(np_square, (batch,)))
    """),
    code("""
    @jax.jit
    def step(w, x):
        loss, g = jax.value_and_grad(lambda w: np_sin(scale_add(x, w, 0.5)).sum())(w)
        return loss, w - 0.1 * g

    w = jnp.zeros(3)
    with jaxops.compile_counter() as counter:
        for _ in range(5):
            loss, w = step(w, x)
    print("loss", float(loss), "traces", counter.traces["step"], "compiles", counter.compiles["step"])
    """),
]


PORTING: list[Cell] = [
    md("""
    # Porting from PyTorch

    `jaxops` keeps PyTorch's names and schema spelling, so porting an op is mostly mechanical. Each
    section shows the PyTorch original and its jaxops twin side by side. The PyTorch cells run only
    when `torch` is installed; the jaxops cells always run.

    | PyTorch | jaxops / custom_vjp |
    |---|---|
    | `torch.library.custom_op(name, mutates_args=...)` | `jaxops.custom_op(name, mutates_args=...)` |
    | `device_types="cpu"` + NumPy body | `host=True` (NumPy body, any device) |
    | `op.register_fake(fn)` | `op.register_fake(fn)` returning `jax.ShapeDtypeStruct` |
    | `op.register_autograd(backward, setup_context=...)` | the same |
    | `op.register_vmap(fn)` | the same |
    | `torch.library.opcheck(op, args)` | `jaxops.opcheck(op, args)` |
    | `torch.autograd.Function` | `custom_vjp.Function` |
    | `torch.autograd.gradcheck` | `custom_vjp.gradcheck` |
    """),
    code("""
    import importlib.util

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxops
    from custom_vjp import Function, gradcheck

    HAS_TORCH = importlib.util.find_spec("torch") is not None
    if HAS_TORCH:
        import torch
    print("torch available:", HAS_TORCH)
    x_np = np.linspace(-2.0, 2.0, 5).astype(np.float32)
    """),
    md("""
    ## 1. A custom op with a NumPy kernel, a fake and a backward

    PyTorch:
    """),
    code("""
    if HAS_TORCH:
        @torch.library.custom_op("porting::numpy_sin", mutates_args=(), device_types="cpu")
        def torch_numpy_sin(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.sin(x.numpy()))

        @torch_numpy_sin.register_fake
        def _(x):
            return torch.empty_like(x)

        def torch_setup_context(ctx, inputs, output):
            (x,) = inputs
            ctx.save_for_backward(x)

        def torch_backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * x.cos()

        torch_numpy_sin.register_autograd(torch_backward, setup_context=torch_setup_context)

        xt = torch.tensor(x_np, requires_grad=True)
        torch_numpy_sin(xt).sum().backward()
        torch_grad = xt.grad.numpy()
        print(torch.library.infer_schema(torch_numpy_sin._init_fn, mutates_args=()))
        print(torch_grad)
    else:
        print("torch is not installed: skipping the PyTorch side")
    """),
    md("""
    jaxops: the same shape of code. `host=True` replaces `device_types="cpu"` + `.numpy()`, the fake
    returns a `jax.ShapeDtypeStruct`, and `setup_context` / `backward` are unchanged except for
    `jnp` in place of tensor methods.
    """),
    code("""
    @jaxops.custom_op("porting::numpy_sin", mutates_args=(), host=True)
    def numpy_sin(x: np.ndarray) -> np.ndarray:
        return np.sin(x)

    @numpy_sin.register_fake
    def _(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * jnp.cos(x)

    numpy_sin.register_autograd(backward, setup_context=setup_context)

    x = jnp.asarray(x_np)
    jax_grad = jax.grad(lambda x: numpy_sin(x).sum())(x)
    print(numpy_sin.schema)
    print(jax_grad)
    if HAS_TORCH:
        np.testing.assert_allclose(np.asarray(jax_grad), torch_grad, rtol=1e-6)
        print("gradients agree with PyTorch")
    """),
    md("""
    Checking the op: `torch.library.opcheck` and `jaxops.opcheck` run the same idea of checks.
    """),
    code("""
    if HAS_TORCH:
        print(torch.library.opcheck(torch_numpy_sin, (torch.tensor(x_np),)))
    print(jaxops.opcheck(numpy_sin, (x,)))
    """),
    md("""
    ## 2. `torch.autograd.Function` and `custom_vjp.Function`

    A Function with a saved output and a backward; `forward` is a staticmethod without `ctx`
    when `setup_context` is given, exactly as in modern PyTorch.
    """),
    code("""
    if HAS_TORCH:
        class TorchSoftplus(torch.autograd.Function):
            @staticmethod
            def forward(x, beta):
                return torch.log1p(torch.exp(beta * x)) / beta

            @staticmethod
            def setup_context(ctx, inputs, output):
                x, beta = inputs
                ctx.save_for_backward(x)
                ctx.beta = beta

            @staticmethod
            def backward(ctx, grad):
                (x,) = ctx.saved_tensors
                return grad * torch.sigmoid(ctx.beta * x), None

        xt = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
        TorchSoftplus.apply(xt, 2.0).sum().backward()
        torch_softplus_grad = xt.grad.numpy()
        print(torch_softplus_grad)
        print(torch.autograd.gradcheck(lambda x: TorchSoftplus.apply(x, 2.0), (xt,)))
    """),
    code("""
    class Softplus(Function):
        @staticmethod
        def forward(x, beta):
            return jnp.log1p(jnp.exp(beta * x)) / beta

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, beta = inputs
            ctx.save_for_backward(x)
            ctx.beta = beta

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * jax.nn.sigmoid(ctx.beta * x), None

    softplus_grad = jax.grad(lambda x: Softplus.apply(x, 2.0).sum())(x)
    print(softplus_grad)
    print(gradcheck(lambda x: Softplus.apply(x, 2.0), (x,)))
    if HAS_TORCH:
        np.testing.assert_allclose(np.asarray(softplus_grad), torch_softplus_grad, rtol=1e-5)
        print("gradients agree with PyTorch")
    """),
    md("""
    What JAX adds on top: the same Function works under `jit`, `vmap` and forward mode (derived
    from the backward, since it is written in JAX).
    """),
    code("""
    print(jax.jit(jax.vmap(jax.grad(lambda x: Softplus.apply(x, 2.0))))(x))
    print(jax.jvp(lambda x: Softplus.apply(x, 2.0), (x,), (jnp.ones_like(x),))[1])
    """),
    md("""
    ## 3. Schemas port unchanged

    The schema strings are PyTorch's, so a `Library`-style definition moves over verbatim.
    """),
    code("""
    schema = "(Tensor x, SymInt n, float alpha=1.0) -> Tensor"
    if HAS_TORCH:
        lib = torch.library.Library("porting_lib", "FRAGMENT")
        lib.define("scaled_repeat" + schema)
        print("torch accepted:", torch.ops.porting_lib.scaled_repeat.default._schema)

    jlib = jaxops.Library("porting_lib", "FRAGMENT")
    jlib.define("scaled_repeat" + schema)
    jlib.impl("scaled_repeat", lambda x, n, alpha=1.0: alpha * jnp.tile(x, n), "default")
    print("jaxops accepted:", jaxops.ops.porting_lib.scaled_repeat.default.schema)
    print(jaxops.ops.porting_lib.scaled_repeat(jnp.arange(2.0), 3, alpha=2.0))
    """),
    md("""
    ## 4. `nn.Module` + `torch.optim` → Equinox + Optax

    | PyTorch | JAX |
    |---|---|
    | `class Net(nn.Module)` with `nn.Parameter`s | `class Net(eqx.Module)` with `jax.Array` fields |
    | `loss.backward()` | `eqx.filter_value_and_grad(loss_fn)(model, x, y)` |
    | `opt = torch.optim.SGD(net.parameters(), lr)`, `opt.step()` | `opt = optax.sgd(lr)`, `opt.update(...)` + `eqx.apply_updates` |
    | the loop body | one `eqx.filter_jit` step, compiled once |

    A module is a pytree, so it can be passed straight to an op's `Tensor` parameters through its
    fields, or whole to a `custom_vjp.Function` (its `backward` returns a module-shaped gradient).
    `notebooks/equinox_training.ipynb` trains a model built from ops of each kind.
    """),
    code("""
    import equinox as eqx
    import optax

    if HAS_TORCH:
        torch.manual_seed(0)
        net = torch.nn.Linear(5, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        xt = torch.from_numpy(np.stack([x_np, x_np**2], 1).T.copy().reshape(2, 5))
        for _ in range(3):
            opt.zero_grad()
            loss = (net(xt) ** 2).mean()
            loss.backward()
            opt.step()
        print("torch loss after 3 steps:", round(float(loss), 4))


    class Linear(eqx.Module):
        w: jax.Array
        b: jax.Array

        def __call__(self, x):
            return x @ self.w + self.b


    def loss_fn(model, x):
        return (model(x) ** 2).mean()


    optimizer = optax.sgd(0.1)


    @eqx.filter_jit
    def train_step(model, opt_state, x):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x)
        updates, opt_state = optimizer.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state, loss


    model = Linear(jnp.full((5, 1), 0.1), jnp.zeros(1))
    opt_state = optimizer.init(model)
    xj = jnp.stack([jnp.asarray(x_np), jnp.asarray(x_np) ** 2])
    for _ in range(3):
        model, opt_state, loss = train_step(model, opt_state, xj)
    print("equinox + optax loss after 3 steps:", round(float(loss), 4))
    """),
]


PLANNING: list[Cell] = [
    md("""
    # Planning a transformer by shape

    `jaxops.plan(fn, *args)` runs `fn` on abstract inputs (`jax.ShapeDtypeStruct`s), with nothing
    compiled or run, and reports every op call with its shapes, bytes and FLOPs. With symbolic
    batch and sequence sizes from `jax.export.symbolic_shape`, the totals are formulas.

    Here: a GPT-2-small-sized decoder (12 layers, `d_model` 768, 12 heads, vocabulary 32k), built
    from custom ops. Its parameters never exist; only their shapes do.
    """),
    code("""
    import io
    import time

    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    import jaxops

    LAYERS, D, HEADS, FFN, VOCAB = 12, 768, 12, 3072, 32_000
    """),
    md("""
    ## The model's ops

    Traceable ops (JAX derives their fakes), one per building block.
    """),
    code("""
    @jaxops.custom_op("tfm::embed", mutates_args=())
    def embed(table: jax.Array, tokens: jax.Array) -> jax.Array:
        return jnp.take(table, tokens, axis=0)

    @jaxops.custom_op("tfm::layer_norm", mutates_args=())
    def layer_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-5) * scale

    @jaxops.custom_op("tfm::linear", mutates_args=())
    def linear(x: jax.Array, w: jax.Array) -> jax.Array:
        return x @ w

    @jaxops.custom_op("tfm::attention", mutates_args=())
    def attention(qkv: jax.Array, heads: int) -> jax.Array:
        b, s, three_d = qkv.shape
        d = three_d // 3
        q, k, v = (t.reshape(b, s, heads, d // heads) for t in jnp.split(qkv, 3, axis=-1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // heads).astype(qkv.dtype)
        mask = jnp.tril(jnp.ones((s, s), bool))
        probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, d)

    @jaxops.custom_op("tfm::gelu", mutates_args=())
    def gelu(x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x)
    """),
    code("""
    def block(p, x):
        h = attention(linear(layer_norm(x, p["ln1"]), p["qkv"]), HEADS)
        x = x + linear(h, p["proj"])
        h = linear(gelu(linear(layer_norm(x, p["ln2"]), p["up"])), p["down"])
        return x + h

    def model(params, tokens):
        with jax.named_scope("embed"):
            x = embed(params["embed"], tokens)
        for i, p in enumerate(params["blocks"]):
            with jax.named_scope(f"block {i}"):
                x = block(p, x)
        with jax.named_scope("head"):
            return linear(layer_norm(x, params["ln_f"]), params["head"])

    def sds(*shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype)

    params = {
        "embed": sds(VOCAB, D),
        "blocks": [
            {"ln1": sds(D), "qkv": sds(D, 3 * D), "proj": sds(D, D),
             "ln2": sds(D), "up": sds(D, FFN), "down": sds(FFN, D)}
            for _ in range(LAYERS)
        ],
        "ln_f": sds(D),
        "head": sds(D, VOCAB),
    }
    """),
    md("""
    ## A symbolic plan

    `b` and `s` are symbolic: the plan holds for every batch and sequence length.
    """),
    code("""
    b, s = jax.export.symbolic_shape("b, s")
    tokens = jax.ShapeDtypeStruct((b, s), jnp.int32)

    t0 = time.perf_counter()
    plan = jaxops.plan(model, params, tokens)
    print(f"planned {len(plan.records)} op calls in {time.perf_counter() - t0:.2f} s")
    print("parameters:", plan.totals["parameters"])
    print("FLOPs:     ", plan.totals["flops"])
    print("activation bytes:", plan.totals["activation_bytes"])
    """),
    code("""
    print("\\n".join(str(plan).splitlines()[:12]))
    print("...")
    print("\\n".join(str(plan).splitlines()[-3:]))
    """),
    md("""
    The first block's records, with symbolic shapes. The attention's output is `[b,s,768]`, but
    its FLOPs grow with `s^2`:
    """),
    code("""
    for r in plan.records[1:9]:
        print(f"{r['op']:<16} {[str(o.shape) for o in r['outputs']]!s:<24} flops {r['flops']}")
    """),
    md("""
    ## Activation memory per layer

    To plot, plan once more at concrete sizes (batch 8, 1024 tokens; plans are cheap and cached).
    `model` runs each part under a `jax.named_scope`, so every record carries its `"scope"` and
    `plan.by_scope()` groups them per layer (Equinox modules get such scopes for free).
    """),
    code("""
    concrete = jaxops.plan(model, params, jax.ShapeDtypeStruct((8, 1024), jnp.int32))
    layers = concrete.by_scope()

    def out_bytes(rs):
        return sum(o.size * o.dtype.itemsize for r in rs if r["depth"] == 0 for o in r["outputs"])

    labels = list(layers)
    assert labels == ["embed"] + [f"block {i}" for i in range(LAYERS)] + ["head"], labels
    mib = [out_bytes(layers[name]) / 2**20 for name in labels]
    for name, m in zip(labels, mib):
        print(f"{name:<9} {m:8.1f} MiB")
    """),
    code("""
    seq_lens = [256, 512, 1024, 2048, 4096]
    block_mib = []
    for n in seq_lens:
        p = jaxops.plan(block, params["blocks"][0], jax.ShapeDtypeStruct((8, n, D), jnp.bfloat16))
        block_mib.append(out_bytes(p.records) / 2**20)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.bar(range(len(labels)), mib, color=["tab:gray"] + ["tab:blue"] * LAYERS + ["tab:orange"])
    ax1.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax1.set_ylabel("op output activations (MiB)")
    ax1.set_title("per layer, batch 8 x 1024 tokens, bf16")
    ax2.plot(seq_lens, block_mib, marker="o")
    ax2.set_xlim(0, seq_lens[-1] * 1.05)  # linear axes from 0: a straight line through 0 is linear growth
    ax2.set_ylim(0, block_mib[-1] * 1.1)
    ax2.set_xticks(seq_lens[1:])
    ax2.set_xlabel("sequence length")
    ax2.set_ylabel("one block's op outputs (MiB)")
    ax2.set_title("one block vs sequence length (batch 8)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    display(Image(data=buf.getvalue()))
    print(dict(zip(seq_lens, [round(m, 1) for m in block_mib])))
    """),
    md("""
    Op outputs of a block grow linearly in the sequence length (a straight line through the origin on
    these linear axes; the `s x s` attention scores live
    *inside* the attention op, and their FLOPs show as the `s^2` term above). The head's logits,
    `[b, s, 32000]`, dominate.

    ## Planning the gradient

    `jaxops.plan(jax.grad(loss), ...)` lists the forward and the backward op calls.
    """),
    code("""
    def loss(params, tokens):
        logits = model(params, tokens).astype(jnp.float32)
        return jax.nn.logsumexp(logits, axis=-1).mean()

    grad_plan = jaxops.plan(jax.grad(loss), params, tokens)
    print(len(plan.records), "forward op calls;", len(grad_plan.records), "with the backward")
    print("gradient FLOPs:", grad_plan.totals["flops"])
    phases = [r["phase"] for r in grad_plan.records]
    print(phases.count("forward"), "forward and", phases.count("backward"), "backward records")
    """),
    md("""
    ## Memory over the program

    `plan.peak_bytes` is a liveness estimate: the arguments stay live, each step allocates its
    outputs (plus the temporaries inside an op's body) while its inputs are still live, and a
    value is freed after its last use. `plan.memory_timeline()` gives the live bytes at every
    step, forward and backward. Symbolically the peak is a formula (for a `grad` plan an upper
    bound: per monomial, the largest coefficient of the steps' peaks):
    """),
    code("""
    print("symbolic peak of the gradient:", grad_plan.peak_bytes)
    concrete_grad = jaxops.plan(jax.grad(loss), params, jax.ShapeDtypeStruct((8, 1024), jnp.int32))
    timeline = concrete_grad.memory_timeline()
    peak = max(timeline, key=lambda t: t["live_bytes"])
    print(f"peak live bytes {concrete_grad.peak_bytes / 2**30:.1f} GiB at step {peak['step']} "
          f"of {len(timeline)} ({peak['phase']}, {peak['scope'] or 'top level'}: {peak['primitive']})")

    fig, ax = plt.subplots(figsize=(11, 3.5))
    for phase, color in (("forward", "tab:blue"), ("backward", "tab:orange")):
        steps = [t["step"] for t in timeline if t["phase"] == phase]
        gib = [t["live_bytes"] / 2**30 for t in timeline if t["phase"] == phase]
        ax.plot(steps, gib, ".-", color=color, label=phase, markersize=3)
    ax.axhline(concrete_grad.peak_bytes / 2**30, color="gray", linestyle="--", linewidth=1, label="peak_bytes")
    ax.set_xlabel("program step (top-level equation)")
    ax.set_ylabel("live buffers (GiB)")
    ax.set_ylim(0, None)
    ax.set_title("jax.grad(loss), batch 8 x 1024 tokens: live bytes per step")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    display(Image(data=buf.getvalue()))
    """),
    md("""
    Activations pile up through the forward pass and are freed as the backward pass consumes
    them, while the parameter gradients accumulate; the peak sits where the two meet.
    """),
]


EQUINOX: list[Cell] = [
    md("""
    # Training an Equinox model built from jaxops ops

    A PyTorch user trains an `nn.Module` with `torch.optim`; in JAX the same program is an
    `eqx.Module` (a pytree of arrays) trained by an Optax optimizer inside one jitted step. This
    notebook builds a small classifier from ops of each kind (`examples/equinox_model.py`):

    * `eqxdemo::dense`: a traceable op with `register_autograd`;
    * `mlp::relu` (from `examples/mlp_ops.py`): a host (NumPy) op with a fake, a backward and a vmap rule;
    * `Norm`: a `custom_vjp.Function` whose first argument is an `eqx.Module`; its `backward`
      returns a gradient shaped like that module.
    """),
    code("""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path.cwd().parent))  # the repository root, for examples/

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import jaxops
    from examples import equinox_model as em

    print(em.dense.name, em.dense.schema)
    print(em.relu.name, em.relu.schema)
    """),
    md("""
    ## The model and one forward call

    The model is an ordinary `eqx.Module`; calling it calls the ops.
    """),
    code("""
    x, y = em.make_data(jax.random.key(1))
    model = em.make_model(jax.random.key(0))
    print("logits:", model(x).shape, "initial loss:", round(float(em.loss_fn(model, x, y)), 4))
    """),
    md("""
    ## Training with Optax, compiled once

    `eqx.filter_jit` + `eqx.filter_value_and_grad` give one compiled step; the registered backward
    of the op, the host op's backward and the Function's `backward` all run inside it.
    `jaxops.compile_counter()` shows the step compiled exactly once.
    """),
    code("""
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    step = em.make_step(optimizer)
    losses = []
    with jaxops.compile_counter() as counter:
        for i in range(60):
            model, opt_state, loss = step(model, opt_state, x, y)
            losses.append(float(loss))
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print("step traced", counter.traces["step"], "compiled", counter.compiles["step"])
    """),
    md("""
    ## The same gradients as plain JAX

    `em.twin(model)` is the same network written with `jnp` only; JAX differentiates it itself.
    """),
    code("""
    g_ops = eqx.filter_grad(em.loss_fn)(model, x, y)
    g_plain = eqx.filter_grad(em.loss_fn)(em.twin(model), x, y)
    pairs = [(g_ops.l1.w, g_plain.l1.w), (g_ops.norm.gamma, g_plain.norm.gamma), (g_ops.l2.b, g_plain.l2.b)]
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs)
    print("gradients equal the plain twin:", err < 1e-5)
    """),
    md("""
    ## A plan per layer

    `jaxops.plan` runs the gradient by shape only; each record carries the `jax.named_scope` it ran
    under and whether it belongs to the forward or the backward pass.
    """),
    code("""
    p = jaxops.plan(eqx.filter_grad(em.loss_fn), model, x, y)
    for scope, records in p.by_scope().items():
        phases = sorted({r["phase"] for r in records})
        print(f"{scope or '(top)':<12} {len(records):>3} records  {', '.join(phases)}")
    print("peak live bytes:", p.peak_bytes)
    """),
]


NOTEBOOKS: dict[str, list[Cell]] = {
    "quickstart.ipynb": QUICKSTART,
    "porting_from_pytorch.ipynb": PORTING,
    "planning.ipynb": PLANNING,
    "equinox_training.ipynb": EQUINOX,
}


def build(cells: list[Cell]) -> nbformat.NotebookNode:
    """A notebook (nbformat 4, python3 kernel, no outputs) from ``cells``."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, text) in enumerate(cells):
        cell = new_markdown_cell(text) if kind == "md" else new_code_cell(text)
        cell["id"] = f"cell-{i}"
        nb.cells.append(cell)
    return nb


def render(name: str) -> str:
    """The exact file contents of notebook ``name``."""
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write every notebook; with ``--check``, only report whether the files are current."""
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
