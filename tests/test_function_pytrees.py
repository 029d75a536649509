"""Pytree arguments of ``Function.apply`` (equinox modules, dicts, tuples) - issue 10.1.

Every backward here scales or tags its result so that a test fails if JAX
differentiated ``forward`` itself instead of calling the user's ``backward``.
"""

from __future__ import annotations

import warnings

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from custom_vjp import Function, saved_tensors_hooks

KEY = jax.random.PRNGKey(0)
X = jnp.array([0.5, -1.0, 2.0])


def _none_like(tree):
    """A gradient with ``None`` at every leaf (what ``eqx.filter_grad`` gives non-arrays)."""
    return jax.tree.map(lambda _: None, tree)


# ----------------------------------------------------------------------------- eqx.nn.Linear


class LinearFn(Function):
    """``model(x)`` with a hand-written backward that returns a module-shaped gradient."""

    calls: list = []

    @staticmethod
    def forward(model, x):
        return model(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        model, x = inputs
        LinearFn.calls.append(ctx.needs_input_grad)
        ctx.save_for_backward(model, x)

    @staticmethod
    def backward(ctx, g):
        model, x = ctx.saved_tensors
        grads = eqx.filter(model, eqx.is_array)
        grads = eqx.tree_at(lambda m: (m.weight, m.bias), grads, (jnp.outer(g, x), g))
        return grads, model.weight.T @ g


def _linear_loss(model, x):
    return jnp.sum(LinearFn.apply(model, x) ** 2)


def _linear_ref(model, x):
    return jnp.sum(model(x) ** 2)


def test_grad_wrt_module_calls_the_users_backward():
    model = eqx.nn.Linear(3, 2, key=KEY)
    LinearFn.calls.clear()
    got = eqx.filter_grad(_linear_loss)(model, X)
    want = eqx.filter_grad(_linear_ref)(model, X)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    assert LinearFn.calls == [(True, False)]  # one entry per forward argument
    # gradient w.r.t. both: the module and the array
    g_model, g_x = jax.grad(_linear_loss, argnums=(0, 1))(model, X)
    w_model, w_x = jax.grad(_linear_ref, argnums=(0, 1))(model, X)
    chex.assert_trees_all_close((g_model, g_x), (w_model, w_x), rtol=1e-6)
    assert LinearFn.calls[-1] == (True, True)


def test_backward_is_used_not_jax_autodiff_of_forward():
    class Doubled(LinearFn):
        @staticmethod
        def backward(ctx, g):
            gm, gx = LinearFn.backward(ctx, g)
            return jax.tree.map(lambda a: 2 * a, gm), None

    model = eqx.nn.Linear(3, 2, key=KEY)
    got = eqx.filter_grad(lambda m, x: jnp.sum(Doubled.apply(m, x) ** 2))(model, X)
    want = eqx.filter_grad(_linear_ref)(model, X)
    chex.assert_trees_all_close(got, jax.tree.map(lambda a: 2 * a, want), rtol=1e-6)


def test_filter_jit_of_filter_grad_wrt_module():
    model = eqx.nn.Linear(3, 2, key=KEY)
    got = eqx.filter_jit(eqx.filter_grad(_linear_loss))(model, X)
    chex.assert_trees_all_close(got, eqx.filter_grad(_linear_ref)(model, X), rtol=1e-6)
    # and the value through jit, vmap over x, forward mode w.r.t. x
    chex.assert_trees_all_close(eqx.filter_jit(LinearFn.apply)(model, X), model(X), rtol=1e-6)
    xs = jnp.stack([X, 2 * X])
    chex.assert_trees_all_close(
        jax.vmap(LinearFn.apply, in_axes=(None, 0))(model, xs), jax.vmap(model)(xs), rtol=1e-6
    )
    _, t = jax.jvp(lambda x: LinearFn.apply(model, x), (X,), (jnp.ones(3),))
    chex.assert_trees_all_close(t, model.weight @ jnp.ones(3), rtol=1e-6)


def test_linear_without_bias_has_a_none_leaf():
    model = eqx.nn.Linear(3, 2, use_bias=False, key=KEY)

    class NoBias(Function):
        @staticmethod
        def forward(model, x):
            return model(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            model, x = ctx.saved_tensors
            assert model.bias is None
            return eqx.tree_at(lambda m: m.weight, eqx.filter(model, eqx.is_array), jnp.outer(g, x)), None

    got = eqx.filter_grad(lambda m: NoBias.apply(m, X).sum())(model)
    want = eqx.filter_grad(lambda m: m(X).sum())(model)
    chex.assert_trees_all_close(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- eqx.nn.MLP


class MLPFn(Function):
    """An MLP whose backward is ``eqx.filter_vjp`` of the module (static activations inside)."""

    @staticmethod
    def forward(ctx, mlp, x):
        ctx.save_for_backward(mlp, x)
        return mlp(x)

    @staticmethod
    def backward(ctx, g):
        mlp, x = ctx.saved_tensors
        _, vjp = eqx.filter_vjp(lambda m, x: m(x), mlp, x)
        g_mlp, g_x = vjp(g)
        return jax.tree.map(lambda a: 3 * a, g_mlp), g_x


def test_mlp_gradient_is_a_module_and_trains_with_optax():
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=KEY)
    got = eqx.filter_grad(lambda m: jnp.sum(MLPFn.apply(m, X) ** 2))(mlp)
    want = eqx.filter_grad(lambda m: jnp.sum(m(X) ** 2))(mlp)
    assert isinstance(got, eqx.nn.MLP)
    chex.assert_trees_all_close(got, jax.tree.map(lambda a: 3 * a, want), rtol=1e-5)

    xs = jax.random.normal(KEY, (16, 3))
    ys = jnp.sin(xs[:, :2])
    opt = optax.sgd(0.05)
    state = opt.init(eqx.filter(mlp, eqx.is_array))

    def loss(m):
        pred = jax.vmap(lambda x: MLPFn.apply(m, x))(xs)
        return jnp.mean((pred - ys) ** 2)

    @eqx.filter_jit
    def step(m, s):
        value, grads = eqx.filter_value_and_grad(loss)(m)
        updates, s = opt.update(grads, s)
        return eqx.apply_updates(m, updates), s, value

    first = None
    for _ in range(20):
        mlp, state, value = step(mlp, state)
        first = value if first is None else first
    assert float(value) < 0.8 * float(first)


# ----------------------------------------------------------------------------- dicts and tuples


class DictFn(Function):
    @staticmethod
    def forward(params, x):
        return params["scale"] * (params["w"] * x + params["b"])

    @staticmethod
    def setup_context(ctx, inputs, output):
        params, x = inputs
        ctx.needs = ctx.needs_input_grad
        ctx.save_for_backward({"w": params["w"], "scale": params["scale"]}, x)

    @staticmethod
    def backward(ctx, g):
        saved, x = ctx.saved_tensors
        assert saved["scale"] == 2.0  # a static leaf of a saved pytree comes back as is
        g = g * saved["scale"]
        return {"w": g * x, "b": None, "scale": None}, g * saved["w"]


def test_dict_argument_with_static_leaf_and_none_gradient():
    params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array(0.5), "scale": 2.0}
    got = eqx.filter_grad(lambda p: DictFn.apply(p, X).sum())(params)
    assert got["scale"] is None  # a Python float is a static leaf
    np.testing.assert_allclose(got["w"], 2.0 * X, rtol=1e-6)
    np.testing.assert_allclose(got["b"], 0.0)  # backward said None: a zero gradient
    gx = jax.jit(jax.grad(lambda x: DictFn.apply(params, x).sum()))(X)
    np.testing.assert_allclose(gx, 2.0 * params["w"], rtol=1e-6)


def test_python_float_leaf_differentiated_by_jax_grad_is_an_array_leaf():
    # jax.grad turns every leaf into a traced array: "scale" is then differentiable
    # and the backward's None for it is a zero gradient.
    class Scale(Function):
        @staticmethod
        def forward(ctx, p, x):
            return p["w"] * p["scale"] * x

        @staticmethod
        def backward(ctx, g):
            return {"w": 7.0 * g, "scale": None}, None

    got = jax.grad(lambda p: Scale.apply(p, X).sum())({"w": jnp.ones(3), "scale": 2.0})
    np.testing.assert_allclose(got["w"], jnp.full(3, 7.0))
    assert float(got["scale"]) == 0.0


def test_tuple_of_arrays_gets_tuple_or_list_gradient():
    class Pair(Function):
        @staticmethod
        def forward(ctx, pair, k):
            a, b = pair
            ctx.k = k
            return a * b * k

        @staticmethod
        def backward(ctx, g):
            return [g * 10.0, g * 20.0], None

    a, b = jnp.array(2.0), jnp.array(3.0)
    ga, gb = jax.grad(lambda p: Pair.apply(p, 1.0))((a, b))
    assert (float(ga), float(gb)) == (10.0, 20.0)
    _, vjp = jax.vjp(lambda p: Pair.apply(p, 1.0), (a, b))
    chex.assert_trees_all_close(vjp(jnp.array(1.0)), ((jnp.array(10.0), jnp.array(20.0)),))


def test_backward_none_for_a_whole_pytree_gives_zeros():
    class IgnoreParams(Function):
        @staticmethod
        def forward(ctx, params, x):
            return params["w"] * x

        @staticmethod
        def backward(ctx, g):
            return None, 5.0 * g

    params = {"w": jnp.ones(3), "v": jnp.ones(2)}
    gp, gx = jax.grad(lambda p, x: IgnoreParams.apply(p, x).sum(), argnums=(0, 1))(params, X)
    chex.assert_trees_all_close(gp, {"w": jnp.zeros(3), "v": jnp.zeros(2)})
    np.testing.assert_allclose(gx, 5.0 * jnp.ones(3))


def test_wrong_gradient_structure_names_the_backward_and_input():
    class WrongTree(Function):
        @staticmethod
        def forward(ctx, params, x):
            return params["w"] * x

        @staticmethod
        def backward(ctx, g):
            return {"weight": g}, g

    with pytest.raises(RuntimeError, match=r"WrongTreeBackward returned a gradient for input 0 \('params'\) whose structure does not match the input: expected PyTreeDef\(\{'w': \*\}\) \(or None\), got PyTreeDef\(\{'weight': \*\}\)"):
        jax.grad(lambda p: WrongTree.apply(p, X).sum())({"w": jnp.ones(3)})


def test_array_gradient_at_a_static_leaf_is_an_error():
    class StaticLeaf(Function):
        @staticmethod
        def forward(ctx, params, x):
            return params["w"] * params["k"] * x

        @staticmethod
        def backward(ctx, g):
            return {"w": g, "k": jnp.zeros(())}, g

    with pytest.raises(RuntimeError, match=r"StaticLeafBackward returned a gradient different than None at position 0 \(leaf 0 of input \('params'\)\)"):
        eqx.filter_grad(lambda p: StaticLeaf.apply(p, X).sum())({"w": jnp.ones(3), "k": 2.0})


def test_list_gradient_of_the_wrong_length():
    class Short(Function):
        @staticmethod
        def forward(ctx, xs):
            return xs[0] + xs[1]

        @staticmethod
        def backward(ctx, g):
            return [g]

    with pytest.raises(RuntimeError, match=r"ShortBackward returned an incorrect number of gradients for list input 0 \(expected a list of 2, got 1\)"):
        jax.grad(lambda a: Short.apply([a, a]).sum())(X)


# ----------------------------------------------------------------------------- saving, hooks, transforms


def test_saved_pytrees_go_through_saved_tensors_hooks():
    packed = []

    def pack(x):
        packed.append(x.shape)
        return x * 2.0

    class SaveTree(Function):
        @staticmethod
        def forward(ctx, params, x):
            ctx.save_for_backward({"w": params["w"], "x": x})
            return params["w"] * x

        @staticmethod
        def backward(ctx, g):
            (saved,) = ctx.saved_tensors
            return {"w": g * saved["x"]}, g * saved["w"]

    params = {"w": jnp.array([1.0, 2.0, 3.0])}
    with saved_tensors_hooks(pack, lambda x: x / 4.0):  # unpack(pack(x)) == x / 2
        gp, gx = jax.grad(lambda p, x: SaveTree.apply(p, x).sum(), argnums=(0, 1))(params, X)
    assert sorted(packed) == [(3,), (3,)]
    np.testing.assert_allclose(gp["w"], X / 2, rtol=1e-6)
    np.testing.assert_allclose(gx, params["w"] / 2, rtol=1e-6)


def test_vmap_staticmethod_sees_pytree_in_dims():
    seen = []

    class Scale(Function):
        @staticmethod
        def forward(params, x):
            return params["a"] * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            params, x = ctx.saved_tensors
            return {"a": jnp.sum(g * x), "tag": None}, g * params["a"]

        @staticmethod
        def vmap(info, in_dims, params, x):
            seen.append(in_dims)
            a = jnp.moveaxis(params["a"], in_dims[0]["a"], 0) if in_dims[0]["a"] is not None else params["a"]
            x = jnp.moveaxis(x, in_dims[1], 0) if in_dims[1] is not None else x
            a = a[:, None] if a.ndim == 1 else a
            return a * x, 0

    params = {"a": jnp.array([1.0, 2.0]), "tag": "t"}
    xs = jnp.ones((2, 3))
    out = jax.vmap(Scale.apply, in_axes=({"a": 0, "tag": None}, 0))(params, xs)
    np.testing.assert_allclose(out, jnp.array([[1.0] * 3, [2.0] * 3]))
    assert seen[-1] == ({"a": 0, "tag": None}, 0)


def test_user_jvp_gets_pytree_tangents():
    class Lin(Function):
        @staticmethod
        def forward(params, x):
            return params["w"] * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, g):
            params, x = ctx.saved_tensors
            return {"w": g * x}, g * params["w"]

        @staticmethod
        def jvp(ctx, t_params, t_x):
            params, x = ctx.saved_tensors
            assert set(t_params) == {"w"}
            return 100.0 * (t_params["w"] * x + params["w"] * t_x)

    params = {"w": jnp.array([1.0, 2.0, 3.0])}
    _, t = jax.jvp(Lin.apply, (params, X), ({"w": jnp.ones(3)}, jnp.zeros(3)))
    np.testing.assert_allclose(t, 100.0 * X, rtol=1e-6)


def test_cache_keys_on_structure_and_static_leaves():
    class Cached(Function):
        @staticmethod
        def forward(ctx, params, x):
            return params["w"] * x * params["k"]

        @staticmethod
        def backward(ctx, g):
            return None, g

    w = jnp.ones(3)
    Cached.apply({"w": w, "k": 2.0}, X)
    Cached.apply({"w": 2 * w, "k": 2.0}, X)  # same structure and static leaf: cache hit
    assert len(Cached.__dict__["_cvjp_info"].cache) == 1
    np.testing.assert_allclose(Cached.apply({"w": w, "k": 3.0}, X), 3.0 * X)
    np.testing.assert_allclose(Cached.apply({"w": w, "k": 3}, X), 3.0 * X)
    assert len(Cached.__dict__["_cvjp_info"].cache) == 3  # 3 and 3.0 differ in type


# ----------------------------------------------------------------------------- tracers in static positions


class Scaled(eqx.Module):
    w: jax.Array
    s: object = eqx.field(static=True)


class ScaledFn(Function):
    @staticmethod
    def forward(m, x):
        return m.w * m.s * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        m, x = ctx.saved_tensors
        return _none_like(m), g * m.w * m.s


def test_static_python_field_is_fine():
    m = Scaled(jnp.ones(3), 2.0)
    np.testing.assert_allclose(jax.jit(lambda x: ScaledFn.apply(m, x))(X), 2.0 * X)
    np.testing.assert_allclose(jax.grad(lambda x: ScaledFn.apply(m, x).sum())(X), 2.0 * jnp.ones(3))


@pytest.mark.parametrize("transform", [jax.jit, jax.grad, jax.vmap])
def test_tracer_in_static_field_raises_naming_function_and_argument(transform):
    def f(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # equinox warns about an array in a static field
            m = Scaled(jnp.ones(3), x)
        return ScaledFn.apply(m, x).sum()

    with pytest.raises(RuntimeError, match=r"ScaledFn\.apply: argument 0 \('m'\) holds a JAX tracer in a static position"):
        transform(f)(X)


def test_array_leaves_are_exactly_equinox_is_array():
    # custom_vjp does not import equinox (0.5 s at import); its predicate must agree.
    from custom_vjp.trees import is_array

    values = [jnp.ones(2), np.ones(2), np.float32(1.0), np.int64(3), 1.0, 3, True, None, "s", jnp.float32, (jnp.ones(1),)]
    assert [is_array(v) for v in values] == [eqx.is_array(v) for v in values]
    jax.jit(lambda x: [is_array(x)] == [eqx.is_array(x)] or pytest.fail("tracer"))(X)


def test_module_argument_under_scan_checkpoint_and_filter_vmap():
    model = eqx.nn.Linear(3, 3, key=KEY)

    def rolled(m, x):
        def body(h, _):
            return jnp.tanh(jax.checkpoint(LinearFn.apply)(m, h)), None

        h, _ = jax.lax.scan(body, x, None, length=3)
        return jnp.sum(h**2)

    def rolled_ref(m, x):
        h = x
        for _ in range(3):
            h = jnp.tanh(m(h))
        return jnp.sum(h**2)

    got = eqx.filter_jit(eqx.filter_grad(rolled))(model, X)
    chex.assert_trees_all_close(got, eqx.filter_grad(rolled_ref)(model, X), rtol=1e-5)

    # an ensemble: a batch of modules, vmapped
    models = eqx.filter_vmap(lambda k: eqx.nn.Linear(3, 2, key=k))(jax.random.split(KEY, 4))
    out = eqx.filter_vmap(lambda m: LinearFn.apply(m, X))(models)
    chex.assert_trees_all_close(out, eqx.filter_vmap(lambda m: m(X))(models), rtol=1e-6)
    got = eqx.filter_grad(lambda ms: jnp.sum(eqx.filter_vmap(lambda m: LinearFn.apply(m, X))(ms) ** 2))(models)
    want = eqx.filter_grad(lambda ms: jnp.sum(eqx.filter_vmap(lambda m: m(X))(ms) ** 2))(models)
    chex.assert_trees_all_close(got, want, rtol=1e-5)


def test_cache_stays_bounded_with_a_fresh_static_leaf_per_call():
    class Act(Function):
        @staticmethod
        def forward(ctx, params, x):
            return params["act"](params["w"] * x)

        @staticmethod
        def backward(ctx, g):
            return None, g

    from custom_vjp import function as function_module

    for i in range(function_module._CACHE_LIMIT + 10):
        out = Act.apply({"w": jnp.ones(3), "act": lambda v, i=i: v + i}, X)  # a new closure each call
    np.testing.assert_allclose(out, X + function_module._CACHE_LIMIT + 9)
    assert len(Act.__dict__["_cvjp_info"].cache) == function_module._CACHE_LIMIT
