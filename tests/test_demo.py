"""``jaxops demo`` (``jaxops.demo``): the end-to-end tour runs and its claims hold."""

from __future__ import annotations

import io

import jax
import pytest

from jaxops import demo


@pytest.fixture(scope="module")
def tour() -> tuple[demo.DemoResult, list[str]]:
    buf = io.StringIO()
    result = demo.run(steps=30, progress=False, out=buf)
    return result, buf.getvalue().splitlines()


def test_demo_ok(tour: tuple[demo.DemoResult, list[str]]) -> None:
    result, lines = tour
    assert result.ok
    assert lines[-1] == "demo OK"


def test_losses_decrease(tour: tuple[demo.DemoResult, list[str]]) -> None:
    result, lines = tour
    assert len(result.losses) == 30
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.accuracy_after > result.accuracy_before
    assert result.accuracy_after >= 0.9
    assert f"loss decreased: {result.losses[0]:.4f} -> {result.losses[-1]:.4f} (yes)" in lines


def test_step_compiled_once(tour: tuple[demo.DemoResult, list[str]]) -> None:
    result, lines = tour
    assert (result.traces, result.compiles) == (1, 1)
    assert "train_step traced 1x, compiled 1x" in lines
    assert "compiled once: traces=1 compiles=1 (yes)" in lines


def test_opcheck_all_success(tour: tuple[demo.DemoResult, list[str]]) -> None:
    result, lines = tour
    assert sorted(result.opcheck) == ["tour::gelu", "tour::linear", "tour::num_correct", "tour::softmax_xent"]
    for checks in result.opcheck.values():
        assert checks == {
            "test_schema": "SUCCESS",
            "test_autograd_registration": "SUCCESS",
            "test_faketensor": "SUCCESS",
            "test_aot_dispatch_dynamic": "SUCCESS",
            "test_vmap": "SUCCESS",
            "test_gradcheck": "SUCCESS",
        }
    assert result.gradcheck is True
    assert "opcheck: 24/24 SUCCESS; Function gradcheck: SUCCESS" in lines


def test_vmap_rule_batches_host_calls(tour: tuple[demo.DemoResult, list[str]]) -> None:
    result, lines = tour
    assert (result.vmap_batch, result.vmap_gelu_calls) == (16, 1)
    assert "vmap rule: 1 host call(s) for a batch of 16" in lines


def test_plan_section(tour: tuple[demo.DemoResult, list[str]]) -> None:
    result, lines = tour
    ops = [ln.split()[1] for ln in result.plan_table.splitlines() if ln.split() and ln.split()[0].isdigit()]
    assert ops == ["tour::linear", "tour::gelu", "tour::linear", "tour::linear", "tour::softmax_xent"]
    assert "f32[b,8]" in result.plan_table
    assert result.grad_plan_records > len(ops)
    assert result.seconds["plan"] < 5.0


def test_sections_in_order(tour: tuple[demo.DemoResult, list[str]]) -> None:
    _, lines = tour
    heads = [ln for ln in lines if ln.startswith("== ")]
    assert heads == [
        "== 1. ops ==",
        "== 2. plan of the loss, by shape (symbolic batch b) ==",
        "== 3. training: 30 SGD steps, batch 256 ==",
        "== 4. per-example gradients: jax.vmap(jax.grad(loss)) ==",
        "== 5. opcheck ==",
        "== summary ==",
    ]
    assert "tour::gelu(Tensor x) -> Tensor" in lines
    i = lines.index("tour::gelu(Tensor x) -> Tensor")
    assert lines[i + 1] == "    kernels default: host; fake registered; autograd registered; vmap registered"


def test_define_ops_is_rerunnable() -> None:
    first = demo.define_ops()
    second = demo.define_ops()
    import jaxops

    assert jaxops.ops.tour.gelu.default is second.gelu
    assert first.gelu is not second.gelu
    x = jax.numpy.array([[-1.0, 0.0, 2.0]])
    assert second.gelu(x).shape == (1, 3)
    assert second.gelu_calls == [1]


def test_format_summary_reports_failure() -> None:
    bad = demo.DemoResult(
        losses=[1.0, 2.0], accuracy_before=0.3, accuracy_after=0.2, traces=2, compiles=2,
        plan_table="", grad_plan_records=0, vmap_batch=16, vmap_gelu_calls=16,
        opcheck={"tour::linear": {"test_vmap": RuntimeError("x")}}, gradcheck=True, seconds={},
    )
    assert not bad.ok
    text = demo.format_summary(bad).splitlines()
    assert text[1] == "loss decreased: 1.0000 -> 2.0000 (NO)"
    assert text[3] == "compiled once: traces=2 compiles=2 (NO)"
    assert text[5] == "opcheck: 0/1 SUCCESS; Function gradcheck: SUCCESS"
    assert text[-1] == "demo FAILED"
