"""jaxops.plan: records per op call, FLOPs/bytes, symbolic shapes, grad, caching, tables."""

# ruff: noqa: F722 - jaxtyping shape strings in annotations

from __future__ import annotations

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

import jaxops
from jaxops.plan import is_planning, register_cost

PLAN = sys.modules["jaxops.plan"]  # the module (jaxops.plan is the function)
S = jax.ShapeDtypeStruct
F32 = jnp.float32


@pytest.fixture(scope="module")
def ops():
    @jaxops.custom_op("plantest::mm", mutates_args=())
    def mm(a: jax.Array, b: jax.Array) -> jax.Array:
        return a @ b

    @jaxops.custom_op("plantest::act", mutates_args=())
    def act(x: jax.Array) -> jax.Array:
        return jnp.tanh(x)

    @jaxops.custom_op("plantest::hsin", mutates_args=(), host=True)
    def hsin(x: jax.Array) -> jax.Array:
        return np.sin(x)

    @hsin.register_fake
    def _(x):
        return S(x.shape, x.dtype)

    @jaxops.custom_op("plantest::hmm", mutates_args=(), host=True)
    def hmm(a: Float[Array, "m k"], b: Float[Array, "k n"]) -> Float[Array, "m n"]:
        return a @ b

    @jaxops.custom_op("plantest::outer", mutates_args=())
    def outer(x: jax.Array) -> jax.Array:
        return act(x) * 2.0

    return {"mm": mm, "act": act, "hsin": hsin, "hmm": hmm, "outer": outer}


def test_records_one_per_op_call_with_shapes_bytes_flops(ops):
    mm, act = ops["mm"], ops["act"]
    p = jaxops.plan(lambda x, w: act(mm(x, w)), S((2, 4), F32), S((4, 3), F32))
    assert isinstance(p, jaxops.Plan)
    assert [r["op"] for r in p.records] == ["plantest::mm", "plantest::act"]
    r0 = p.records[0]
    assert r0["inputs"] == [S((2, 4), F32), S((4, 3), F32)]
    assert r0["outputs"] == [S((2, 3), F32)]
    assert r0["bytes"] == (8 + 12 + 6) * 4
    assert r0["flops"] == 2 * 2 * 3 * 4
    assert p.records[1]["flops"] == 6  # elementwise: output size
    assert p.totals["flops"] == 48 + 6
    assert p.totals["bytes"] == (8 + 12 + 6) * 4 + 12 * 4
    assert p.totals["parameters"] == 8  # elements of the first argument (two-argument fn)
    assert p.totals["activation_bytes"] == 2 * 6 * 4
    assert list(p) == p.records and len(p) == 2 and p[1]["op"] == "plantest::act"
    assert p.outputs == S((2, 3), F32)


def test_symbolic_shapes_give_symbolic_totals(ops):
    mm = ops["mm"]
    b, = jax.export.symbolic_shape("b")
    p = jaxops.plan(lambda x, w: mm(x, w), S((b, 4), F32), S((4, 3), F32))
    assert str(p.records[0]["flops"]) == "24*b"
    assert p.records[0]["outputs"][0].shape[0] == b
    assert str(p.totals["bytes"]) == "28*b + 48"
    assert str(p.totals["flops"]) == "24*b"


def test_jax_primitives_outside_ops_are_aggregated_not_records(ops):
    act = ops["act"]
    p = jaxops.plan(lambda x: jnp.sum(jnp.sin(act(x))), S((8,), F32))
    assert [r["op"] for r in p] == ["plantest::act"]
    assert p.jax_primitives["sin"] == {"count": 1, "flops": 8, "bytes": 64, "output_bytes": 32}
    assert p.jax_primitives["reduce_sum"]["flops"] == 8
    assert p.totals["jax_flops"] == 16
    assert p.totals["flops"] == 8 + 16
    text = str(p)
    assert "(jax: 2 primitives)" in text
    per = p.table(jax="per-primitive")
    assert "(jax) sin" in per and "(jax) reduce_sum" in per
    with pytest.raises(ValueError, match="must be 'line', 'per-primitive' or 'none'"):
        p.table(jax="bogus")


def test_str_is_an_aligned_table_ending_in_total_and_html(ops):
    mm, act = ops["mm"], ops["act"]
    p = jaxops.plan(lambda x, w: act(mm(x, w)), S((2, 4), F32), S((4, 3), F32))
    lines = str(p).splitlines()
    assert lines[0].split() == ["#", "op", "inputs", "outputs", "calls", "bytes", "flops", "phase", "scope"]
    assert lines[-1].split()[0] == "total"
    assert lines[-1].split()[-1] == "54"
    assert lines[2].split()[-1] == "forward"  # top-level scope "" leaves the last column empty
    # aligned: the op column starts at the same offset on every record line
    col = lines[0].index("op")
    assert lines[2][col:].startswith("plantest::mm") and lines[3][col:].startswith("plantest::act")
    assert "f32[2,4] f32[4,3]" in lines[2]
    html = p._repr_html_()
    assert html.startswith("<table") and "<td>plantest::mm</td>" in html and "total" in html
    assert "activation_bytes" in p.summary()


def test_grad_of_a_loss_plans_forward_and_backward_copies(ops):
    mm, act = ops["mm"], ops["act"]

    def loss(w, x):
        return jnp.sum(act(mm(x, w)))

    p = jaxops.plan(jax.grad(loss), S((4, 3), F32), S((2, 4), F32))
    names = [r["op"] for r in p]
    assert names.count("plantest::mm") == 2 and names.count("plantest::act") == 2
    assert p.outputs == S((4, 3), F32)
    assert p.totals["flops"] > 0


def test_host_ops_plan_through_their_fake_with_unknown_flops(ops):
    hsin = ops["hsin"]
    p = jaxops.plan(lambda x: hsin(x), S((3, 5), F32))
    (r,) = p.records
    assert r["op"] == "plantest::hsin" and r["outputs"] == [S((3, 5), F32)] and r["host"] is True
    assert r["flops"] is None
    assert p.totals["unknown_flops"] == 1
    assert "?" in str(p).splitlines()[2]


def test_host_op_with_annotation_derived_fake_plans_symbolically(ops):
    hmm = ops["hmm"]
    b, = jax.export.symbolic_shape("b")
    p = jaxops.plan(hmm, S((b, 3), F32), S((3, 5), F32))
    assert p.records[0]["outputs"] == [S((b, 5), F32)]


def test_registered_cost_function_wins(ops):
    hsin = ops["hsin"]
    register_cost(hsin, lambda ins, outs: 7 * ins[0].shape[0])
    try:
        p = jaxops.plan(lambda x: hsin(x), S((3, 5), F32))
        assert p.records[0]["flops"] == 21
        assert jaxops.plan.register_cost is register_cost
    finally:
        PLAN._COSTS.pop("plantest::hsin", None)
        PLAN._COST_GEN[0] += 1


def test_failing_cost_function_names_the_op(ops):
    act = ops["act"]
    register_cost("plantest::act", lambda ins, outs: 1 / 0)
    try:
        with pytest.raises(RuntimeError, match=r"plantest::act: the cost function registered with register_cost failed"):
            jaxops.plan(lambda x: act(x), S((3,), F32))
    finally:
        PLAN._COSTS.pop("plantest::act", None)
        PLAN._COST_GEN[0] += 1


def test_repeated_planning_is_cached_without_retrace(ops):
    act = ops["act"]
    traces = []

    def f(x, n):
        traces.append(1)
        for _ in range(n):
            x = act(x)
        return x

    p1 = jaxops.plan(f, S((4,), F32), 3)
    p2 = jaxops.plan(f, S((4,), F32), 3)
    assert p1 is p2 and len(traces) == 1
    assert len(p1.records) == 3
    jaxops.plan(f, S((5,), F32), 3)  # another shape: a new trace
    assert len(traces) == 2
    p4 = jaxops.plan(f, S((4,), F32), 2)  # another static argument
    assert len(traces) == 3 and len(p4.records) == 2
    jaxops.plan(f, np.zeros((4,), np.float32), 3)  # a concrete array of the same signature
    assert len(traces) == 3


def test_cache_invalidated_when_an_op_is_redefined():
    @jaxops.custom_op("plantest::redef", mutates_args=())
    def first(x: jax.Array) -> jax.Array:
        return x + 1

    traces = []

    def f(x):
        traces.append(1)
        return jaxops.ops.plantest.redef(x)

    jaxops.plan(f, S((2,), F32))

    @jaxops.custom_op("plantest::redef", mutates_args=())
    def second(x: jax.Array) -> jax.Array:
        return x * x * x

    p = jaxops.plan(f, S((2,), F32))
    assert len(traces) == 2 and p.records[0]["flops"] == 4


def test_scan_multiplies_calls_and_nested_ops_have_depth(ops):
    mm, outer = ops["mm"], ops["outer"]

    def f(w, x):
        def body(c, _):
            return mm(c, w), None

        return jax.lax.scan(body, x, None, length=5)[0]

    p = jaxops.plan(f, S((4, 4), F32), S((2, 4), F32))
    (r,) = p.records
    assert r["calls"] == 5 and r["flops"] == 64
    assert p.totals["flops"] == 5 * 64 and p.totals["op_calls"] == 5

    q = jaxops.plan(lambda x: outer(x), S((3,), F32))
    assert [(r["op"], r["depth"]) for r in q] == [("plantest::outer", 0), ("plantest::act", 1)]
    assert q.records[0]["flops"] == 6  # tanh (3) + mul (3)
    assert q.totals["op_flops"] == 6  # the inner op is not counted twice


def test_while_loop_has_unknown_calls_and_cond_lists_branches(ops):
    act = ops["act"]

    def f(x):
        x = jax.lax.while_loop(lambda c: jnp.sum(c) < 10.0, act, x)
        return jax.lax.cond(jnp.sum(x) > 0, act, lambda y: y * 2.0, x)

    p = jaxops.plan(f, S((3,), F32))
    assert [r["calls"] for r in p] == [None, 1]
    assert str(p).splitlines()[2].split()[4] == "?"


def test_pytrees_and_static_args(ops):
    mm = ops["mm"]
    params = {"w1": S((4, 8), F32), "w2": S((8, 2), F32)}

    def model(params, x, *, act_name):
        h = mm(x, params["w1"])
        h = getattr(jnp, act_name)(h)
        return mm(h, params["w2"])

    p = jaxops.plan(model, params, S((3, 4), F32), act_name="tanh")
    assert [r["outputs"][0].shape for r in p] == [(3, 8), (3, 2)]
    assert p.totals["parameters"] == 32 + 16
    assert p.jax_primitives["tanh"]["count"] == 1


def test_is_planning_is_true_only_while_tracing(ops):
    seen = []

    def f(x):
        seen.append(is_planning())
        return x

    jaxops.plan(f, S((1,), F32))
    assert seen == [True] and is_planning() is False


def test_data_dependent_size_is_a_named_symbol():
    pytest.importorskip("jaxops.dynamic")

    @jaxops.custom_op("plantest::nonzero", mutates_args=(), host=True)
    def nonzero(x: jax.Array) -> jax.Array:
        return np.argwhere(x)

    @nonzero.register_fake
    def _(x):
        n = jaxops.get_ctx().new_dynamic_size()
        return S((n, x.ndim), jnp.int32)

    p = jaxops.plan(lambda x: nonzero(x), S((4, 4), F32))
    n = p.records[0]["outputs"][0].shape[0]
    assert not isinstance(n, int) and str(n)


def test_plan_of_200_ops_is_well_under_a_second(ops):
    import time

    act = ops["act"]

    def model(x):
        for _ in range(200):
            x = act(x)
        return x

    jaxops.plan(model, S((8,), F32))  # warm the op's own trace cache
    t0 = time.perf_counter()
    p = jaxops.plan(lambda x: model(x), S((8,), F32))
    assert time.perf_counter() - t0 < 1.0
    assert len(p.records) == 200 and p.totals["flops"] == 1600


def test_grad_with_host_op_fallback_warning_is_still_planned(ops):
    hsin, mm = ops["hsin"], ops["mm"]

    def loss(w, x):
        return jnp.sum(hsin(mm(x, w)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = jaxops.plan(jax.grad(loss), S((4, 3), F32), S((2, 4), F32))
    assert "plantest::hsin" in [r["op"] for r in p]


# ------------------------------------------------------------- scopes and phases
def test_records_carry_scope_and_phase_and_group_by_scope(ops):
    mm, act = ops["mm"], ops["act"]

    def loss(w, x):
        with jax.named_scope("enc"):
            h = mm(x, w)
            with jax.named_scope("act"):
                h = act(h)
        return jnp.sum(mm(h, w.T))

    p = jaxops.plan(loss, S((4, 4), F32), S((2, 4), F32))
    assert [(r["op"], r["scope"], r["phase"]) for r in p] == [
        ("plantest::mm", "enc", "forward"),
        ("plantest::act", "enc/act", "forward"),
        ("plantest::mm", "", "forward"),
    ]
    groups = p.by_scope()
    assert list(groups) == ["enc", "enc/act", ""]
    assert groups["enc/act"] == [p.records[1]]
    # with jax=True the plain primitives (the transpose and the sum) join their scope's list
    assert [r["op"] for r in p.by_scope(jax=True)[""]] == ["plantest::mm", "(jax)"]
    text = str(p).splitlines()
    assert text[3].split()[-2:] == ["forward", "enc/act"]
    assert text[-1].split()[0] == "total"


def test_grad_plan_tells_backward_records_apart(ops):
    mm, act = ops["mm"], ops["act"]

    def loss(w, x):
        with jax.named_scope("layer"):
            h = act(mm(x, w))
        return jnp.sum(h)

    p = jaxops.plan(jax.grad(loss), S((4, 3), F32), S((2, 4), F32))
    phases = [(r["op"], r["phase"]) for r in p]
    assert phases == [
        ("plantest::mm", "forward"), ("plantest::act", "forward"),
        ("plantest::act", "backward"), ("plantest::mm", "backward"),
    ]
    assert {r["scope"] for r in p} == {"layer"}  # jvp/transpose entries are not part of the scope
    assert [(g["scope"], g["phase"]) for g in p.jax_groups] == [("", "forward"), ("", "backward")]


def test_scopes_compose_through_nested_jit_and_scan(ops):
    act = ops["act"]

    @jax.jit
    def inner(x):
        with jax.named_scope("inner"):
            return act(x)

    def f(x):
        with jax.named_scope("outer"):
            x = inner(x)

            def body(c, _):
                with jax.named_scope("step"):
                    return act(c), None

            return jax.lax.scan(body, x, None, length=3)[0]

    p = jaxops.plan(f, S((5,), F32))
    assert [(r["scope"], r["calls"]) for r in p] == [("outer/inner", 1), ("outer/step", 3)]


def test_equinox_mlp_shows_one_line_per_layer():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(4, 2, 8, depth=2, key=jax.random.PRNGKey(0))
    p = jaxops.plan(mlp, S((4,), F32))
    text = str(p)
    assert "(jax: 8 primitives)" not in text
    lines = [ln for ln in text.splitlines() if "(jax:" in ln]
    assert [ln.split()[-1] for ln in lines] == [
        "eqx.nn.MLP/eqx.nn.Linear", "eqx.nn.MLP", "eqx.nn.MLP/eqx.nn.Linear", "eqx.nn.MLP",
        "eqx.nn.MLP/eqx.nn.Linear",
    ]
    layers = [g for g in p.jax_groups if g["scope"] == "eqx.nn.MLP/eqx.nn.Linear"]
    # dot_general + add per layer: 2 * in * out + out FLOPs
    assert [g["flops"] for g in layers] == [2 * 4 * 8 + 8, 2 * 8 * 8 + 8, 2 * 8 * 2 + 2]
    assert [g["primitives"] for g in layers] == [{"dot_general": 1, "add": 1}] * 3
    assert sum(g["flops"] for g in p.jax_groups) == p.totals["flops"]
    assert set(p.by_scope(jax=True)) == {"eqx.nn.MLP/eqx.nn.Linear", "eqx.nn.MLP"}
    assert p.by_scope() == {}  # no op calls: records are op calls only


# ------------------------------------------------------------------ peak bytes
def test_peak_bytes_follows_liveness_exactly_on_a_chain():
    # x (32 B) -> a = x*2 -> b = a+1 -> c = b*b; a is dead once b exists.
    p = jaxops.plan(lambda x: (x * 2 + 1) ** 2, S((8,), F32))
    steps = [(t["primitive"], t["live_bytes"]) for t in p.memory_timeline()]
    assert steps == [("mul", 64), ("add", 96), ("integer_pow", 96)]
    assert p.peak_bytes == 96
    # a value used late stays live: x*2 is kept until the end
    q = jaxops.plan(lambda x: (lambda a: jnp.sin(jnp.cos(a)) + a)(x * 2), S((8,), F32))
    assert q.peak_bytes == 32 + 3 * 32  # x, a, cos(a) while sin is made; then a, sin, add
    assert max(t["live_bytes"] for t in q.memory_timeline()) == q.peak_bytes
    assert "peak_bytes 128" in q.summary()


def test_peak_bytes_counts_temporaries_of_op_bodies(ops):
    outer = ops["outer"]  # act(x) * 2.0 inside: one temporary of the output's size
    p = jaxops.plan(lambda x: outer(x), S((16,), F32))
    assert p.peak_bytes == 64 + 64 + 64  # argument, the body's temporary, the output


def test_peak_bytes_is_symbolic_with_symbolic_shapes(ops):
    mm = ops["mm"]
    b, = jax.export.symbolic_shape("b")
    p = jaxops.plan(lambda x, w: jnp.tanh(mm(x, w)), S((b, 4), F32), S((4, 3), F32))
    # arguments 16b + 48, mm's output 12b, tanh's output 12b (both live at the tanh step)
    assert str(p.peak_bytes) == "40*b + 48"


@pytest.mark.cpu_only  # the yardstick is XLA's CPU memory analysis; XLA:GPU fuses and rematerializes differently
@pytest.mark.parametrize("batch", [32, 1024])
def test_peak_bytes_agrees_with_xla_memory_analysis(batch):
    """Within ±25 % of XLA's argument + output + temp − alias bytes (CPU).

    That sum is XLA's whole footprint: arguments (never donated here), output
    buffers and the peak of its temporary allocation after buffer reuse.  An
    Equinox MLP is compared (matmul-dominated, so XLA's fusion of elementwise
    chains, which the plan does not model, changes little): forward and grad.
    Not comparable: programs XLA's CPU backend turns into one YNNPACK fusion
    (``__ynn_fusion``, e.g. ``jnp.sum(tanh(tanh(x @ w1) @ w2))``): its buffers
    inside are not in XLA's buffer assignment, so XLA reports 0 temp bytes
    (measured: plan / XLA = 1.40 forward, 1.36 grad for four 512x512 layers).
    """
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(256, 10, 512, depth=3, key=jax.random.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    abstract = jax.tree_util.tree_map(lambda v: S(v.shape, v.dtype), params)

    def fwd(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def loss(p, x):
        return jnp.mean(fwd(p, x) ** 2)

    x = S((batch, 256), F32)
    for fn in (fwd, jax.grad(loss)):
        m = jax.jit(fn).lower(abstract, x).compile().memory_analysis()
        xla = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        ratio = jaxops.plan(fn, abstract, x).peak_bytes / xla
        assert 0.75 <= ratio <= 1.25, (fn, ratio)


# -------------------------------------------------------- fakes of traceable ops
@pytest.fixture()
def placeholder():
    traced = []

    @jaxops.custom_op("plantest::placeholder", mutates_args=())
    def op(x: jax.Array, w: jax.Array) -> jax.Array:
        traced.append(1)
        raise NotImplementedError("placeholder: the kernel is not written yet")

    @op.register_fake
    def _(x, w):
        return S((x.shape[0], w.shape[1]), x.dtype)

    return op, traced


def test_plan_uses_a_registered_fake_instead_of_the_body(placeholder):
    op, traced = placeholder
    assert op.has_registered_fake
    p = jaxops.plan(lambda x, w: jnp.tanh(op(x, w)), S((2, 4), F32), S((4, 3), F32))
    (r,) = p.records
    assert traced == [] and r["fake"] is True and r["host"] is False
    assert r["outputs"] == [S((2, 3), F32)] and r["flops"] is None
    assert p.outputs == S((2, 3), F32)
    # a cost function gives the FLOPs the untraced body cannot
    register_cost(op, lambda ins, outs: 2 * ins[0].shape[0] * ins[0].shape[1] * ins[1].shape[1])
    try:
        assert jaxops.plan(lambda x, w: op(x, w), S((2, 4), F32), S((4, 3), F32)).records[0]["flops"] == 48
    finally:
        PLAN._COSTS.pop("plantest::placeholder", None)
        PLAN._COST_GEN[0] += 1
    # eval_shape looks like jit from inside the op: it keeps tracing the body
    with pytest.raises(NotImplementedError, match="kernel is not written yet"):
        jax.eval_shape(op, S((2, 4), F32), S((4, 3), F32))
    assert traced == [1]


def test_plan_through_a_fake_does_not_leak_into_jit_or_eager_calls():
    traced = []

    @jaxops.custom_op("plantest::double", mutates_args=())
    def double(x: jax.Array) -> jax.Array:
        traced.append(1)
        return x * 2.0

    @double.register_fake
    def _(x):
        return S(x.shape, x.dtype)

    p = jaxops.plan(lambda x: double(x), S((3,), F32))
    assert traced == [] and p.records[0]["fake"] is True
    x = jnp.arange(3.0)
    np.testing.assert_allclose(jax.jit(lambda x: double(x))(x), [0.0, 2.0, 4.0])
    np.testing.assert_allclose(double(x), [0.0, 2.0, 4.0])
    assert traced  # real calls traced the body
    # vmap under plan batches the fake's shapes
    q = jaxops.plan(jax.vmap(double), S((5, 3), F32))
    assert q.outputs == S((5, 3), F32) and q.records[0]["fake"] is True


def test_grad_plan_with_a_fake_traces_the_body_only_without_a_registered_backward(placeholder):
    op, traced = placeholder

    def loss(w, x):
        return jnp.sum(op(x, w))

    with pytest.raises(NotImplementedError, match="kernel is not written yet") as info:
        jaxops.plan(jax.grad(loss), S((4, 3), F32), S((2, 4), F32))
    assert any("register_autograd" in n for n in getattr(info.value, "__notes__", []))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w.T, x.T @ g

    op.register_autograd(backward, setup_context=setup_context)
    traced.clear()
    p = jaxops.plan(jax.grad(loss), S((4, 3), F32), S((2, 4), F32))
    assert traced == [] and p.outputs == S((4, 3), F32)
    assert [(r["op"], r["phase"]) for r in p] == [
        ("plantest::placeholder", "forward"), ("plantest::placeholder", "backward"),
    ]


def test_opcheck_still_compares_a_traceable_ops_fake_with_its_kernel():
    @jaxops.custom_op("plantest::badfake", mutates_args=())
    def op(x: jax.Array) -> jax.Array:
        return x.sum(0)

    @op.register_fake
    def _(x):
        return S(x.shape, x.dtype)  # wrong: the kernel drops axis 0

    with pytest.raises(jaxops.OpCheckError, match="test_faketensor"):
        jaxops.opcheck(op, (jnp.ones((2, 3)),), test_utils="test_faketensor")
    p = jaxops.plan(lambda x: op(x), S((2, 3), F32))
    assert p.records[0]["outputs"] == [S((2, 3), F32)]  # plan believes the fake


# ------------------------------------------------------------- invalid shapes
def test_negative_dimension_raises_naming_the_argument(ops):
    act, mm = ops["act"], ops["mm"]
    with pytest.raises(ValueError, match=r"jaxops.plan\(plantest::act\): argument x has an invalid shape \(-1,\): dimension -1"):
        jaxops.plan(act, S((-1,), F32))
    with pytest.raises(ValueError, match=r"argument params\['w'\] has an invalid shape \(4, -3\)"):
        jaxops.plan(lambda params, x: mm(x, params["w"]), {"w": S((4, -3), F32)}, S((2, 4), F32))
    with pytest.raises(ValueError, match=r"argument y has an invalid shape \(2\.5,\)"):
        jaxops.plan(lambda **kw: kw["y"], y=S((2.5,), F32))
    with pytest.raises(ValueError, match=r"argument args\[1\] has an invalid shape"):
        jaxops.plan(lambda *a: a[0], S((1,), F32), S((-2, 1), F32))


def test_symbolic_peak_is_an_exact_max_or_a_coefficient_bound():
    b, s = jax.export.symbolic_shape("b, s")
    # two peaks no ordering of the symbols decides: the exact max
    few = [2 * b * s + 100, 3 * b * s + 10]
    assert str(PLAN._max_value(few)) == "max(2*b*s + 100, 3*b*s + 10)"
    # past 8 of them: one polynomial at least as large as each (JAX can decide that)
    many = [(20 - k) * b * s + k * s + 1000 * k for k in range(10)]
    bound = PLAN._max_value(many)
    assert str(bound) == "20*b*s + 9*s + 9000"
    assert all(bound >= c for c in many)


def test_symbolic_grad_plan_peak_is_quick(ops):
    import time

    mm, act = ops["mm"], ops["act"]

    def loss(ws, x):
        for w in ws:
            x = act(mm(x, w)) + x
        return jnp.sum(x * x)

    b, = jax.export.symbolic_shape("b")
    ws = [S((16, 16), F32)] * 12
    p = jaxops.plan(jax.grad(loss), ws, S((b, 16), F32))
    t0 = time.perf_counter()
    peak = p.peak_bytes
    assert time.perf_counter() - t0 < 5.0
    assert not isinstance(peak, int) and "b" in str(peak)
    # at least the arguments and the gradients (12 * 16 * 16 floats each) are live at the end
    assert peak >= 2 * 12 * 16 * 16 * 4 + 64 * b
