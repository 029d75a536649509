"""Differential tests: jaxops.infer_schema vs torch.library.infer_schema.

Every case builds a JAX-annotated function and its PyTorch twin (jax.Array <-> torch.Tensor,
jnp.dtype <-> torch.dtype, jax.Device <-> torch.device, jaxops.types.Number <->
torch.types.Number) and checks that both inferrers produce the same schema string.

Where API.md and PyTorch disagree, API.md wins; those cases are kept out of the generator and
pinned separately in ``test_documented_differences`` (see the comment there).
"""

# ruff: noqa: UP006, UP007, UP035, UP045 - typing.Optional / typing.List spellings are tested on purpose

from __future__ import annotations

import collections.abc
import inspect
import random
import typing
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

import jaxops
from jaxops.types import Number

torch = pytest.importorskip("torch")
torch_infer_schema = torch.library.infer_schema

pytestmark = pytest.mark.torch

N_CASES = 200

# base -> (jax annotations to pick from, torch annotation)
_BASES: dict[str, tuple[tuple[object, ...], object]] = {
    "Tensor": ((jax.Array, jnp.ndarray, np.ndarray, Float[Array, "b n"]), torch.Tensor),
    "int": ((int,), int),
    "float": ((float,), float),
    "bool": ((bool,), bool),
    "str": ((str,), str),
    "Number": ((Number,), torch.types.Number),
    "dtype": ((jnp.dtype, np.dtype, jax.typing.DTypeLike), torch.dtype),
    "device": ((jax.Device,), torch.device),
}

# Which wrappers PyTorch supports per base: (list, optional elements, optional list).
_TORCH_VARIANTS = {
    "Tensor": (True, True, False),
    "int": (True, False, True),
    "float": (True, False, True),
    "bool": (True, False, True),
    "str": (False, False, False),
    "Number": (True, False, False),
    "dtype": (False, False, False),
    "device": (False, False, False),
}

# (jax default, torch default) per base, for non-list parameters.
_DEFAULTS: dict[str, list[tuple[object, object]]] = {
    "int": [(0, 0), (3, 3), (-7, -7), (True, True)],
    "float": [(3.14, 3.14), (-1.5, -1.5), (1e-05, 1e-05), (2.0, 2.0), (1e20, 1e20), (4, 4)],
    "bool": [(True, True), (False, False)],
    "str": [("foo", "foo"), ("", ""), ("mean", "mean"), ("a b", "a b")],
    "Number": [(1, 1), (2.5, 2.5), (False, False)],
    "dtype": [
        (jnp.float32, torch.float32),
        (jnp.float64, torch.float64),
        (jnp.float16, torch.float16),
        (jnp.bfloat16, torch.bfloat16),
        (jnp.int64, torch.int64),
        (jnp.int32, torch.int32),
        (jnp.int8, torch.int8),
        (jnp.uint8, torch.uint8),
        (jnp.bool_, torch.bool),
        (jnp.complex64, torch.complex64),
        (np.dtype("float32"), torch.float32),
    ],
    "device": [("cpu", torch.device("cpu")), ("cpu", "cpu"), ("cuda:0", torch.device("cuda:0"))],
}

_SEQ_SPELLINGS = (typing.Sequence, typing.List, collections.abc.Sequence, list)

_RETURN_BASES = ["Tensor", "Tensor[]", "int", "float", "bool", "Number"]


@dataclass
class Case:
    index: int
    jax_fn: object
    torch_fn: object
    mutates_args: object
    op_name: str | None
    description: str


def _seq(spelling: object, elem: object) -> object:
    return spelling[elem]  # type: ignore[index]


def _optional(rng: random.Random, t: object) -> object:
    return typing.Optional[t] if rng.random() < 0.5 else t | None  # type: ignore[operator]


def _param_pair(rng: random.Random) -> tuple[object, object, str, bool, bool]:
    """(jax annotation, torch annotation, base, is_tensor_like, is_list)."""
    base = rng.choice(list(_BASES))
    jax_choices, t_ann = _BASES[base]
    j_ann = rng.choice(jax_choices)
    can_list, can_opt_elem, can_opt_list = _TORCH_VARIANTS[base]
    variants = ["plain", "optional"]
    if can_list:
        variants.append("list")
    if can_opt_elem:
        variants.append("opt_elem")
    if can_opt_list:
        variants.append("opt_list")
    variant = rng.choice(variants)
    seq = rng.choice(_SEQ_SPELLINGS)
    if variant == "plain":
        return j_ann, t_ann, base, base == "Tensor", False
    if variant == "optional":
        return _optional(rng, j_ann), typing.Optional[t_ann], base + "?", base == "Tensor", False
    if variant == "list":
        return _seq(seq, j_ann), _seq(seq, t_ann), base + "[]", base == "Tensor", True
    if variant == "opt_elem":
        return (
            _seq(seq, _optional(rng, j_ann)),
            _seq(seq, typing.Optional[t_ann]),
            base + "?[]",
            True,
            True,
        )
    return (
        _optional(rng, _seq(seq, j_ann)),
        typing.Optional[_seq(seq, t_ann)],
        base + "[]?",
        base == "Tensor",
        True,
    )


def _return_pair(rng: random.Random) -> tuple[object, object]:
    def one() -> tuple[object, object]:
        b = rng.choice(_RETURN_BASES)
        if b == "Tensor[]":
            spelling = rng.choice((list, typing.List))
            return spelling[rng.choice(_BASES["Tensor"][0])], spelling[torch.Tensor]
        j, t = _BASES[b]
        return rng.choice(j), t

    r = rng.random()
    if r < 0.15:
        return None, None
    if r < 0.65:
        return one()
    n = rng.randint(1, 3)
    pairs = [one() for _ in range(n)]
    spelling = tuple if rng.random() < 0.5 else typing.Tuple
    return spelling[tuple(p[0] for p in pairs)], spelling[tuple(p[1] for p in pairs)]


def _make_fn(params: list[inspect.Parameter], ret: object, qualname: str) -> object:
    def fn(*args: object, **kwargs: object) -> None:  # pragma: no cover - never called
        raise AssertionError

    fn.__signature__ = inspect.Signature(params, return_annotation=ret)  # type: ignore[attr-defined]
    fn.__qualname__ = fn.__name__ = qualname
    return fn


def _make_case(index: int) -> Case:
    rng = random.Random(1000 + index)
    n = rng.randint(0, 7)
    names = rng.sample(
        ["x", "y", "z", "w", "alpha", "beta", "out", "idx", "scale", "mode", "dim", "eps"], n
    )
    pos: list[tuple] = []
    kw: list[tuple] = []
    kw_start = rng.randint(0, n) if rng.random() < 0.4 else n
    tensor_like: list[str] = []
    desc = []
    for i, name in enumerate(names):
        j_ann, t_ann, spec, is_tensor, is_list = _param_pair(rng)
        if is_tensor:
            tensor_like.append(name)
        default: tuple[object, object] | None = None
        if rng.random() < 0.45:
            if spec.endswith("?"):
                default = (None, None)
            elif not is_list and spec in _DEFAULTS:
                default = rng.choice(_DEFAULTS[spec])
        entry = (name, j_ann, t_ann, default)
        (kw if i >= kw_start else pos).append(entry)
        desc.append(
            f"{name}:{spec}{'=' + repr(default[0]) if default else ''}{' (kw)' if i >= kw_start else ''}"
        )
    # Python requires positional parameters without defaults to come first.
    pos.sort(key=lambda e: e[3] is not None)
    order = [e[0] for e in pos + kw]
    j_params, t_params = [], []
    for entries, kind in (
        (pos, inspect.Parameter.POSITIONAL_OR_KEYWORD),
        (kw, inspect.Parameter.KEYWORD_ONLY),
    ):
        for name, j_ann, t_ann, default in entries:
            jd = inspect.Parameter.empty if default is None else default[0]
            td = inspect.Parameter.empty if default is None else default[1]
            j_params.append(inspect.Parameter(name, kind, annotation=j_ann, default=jd))
            t_params.append(inspect.Parameter(name, kind, annotation=t_ann, default=td))
    j_ret, t_ret = _return_pair(rng)
    r = rng.random()
    if r < 0.2:
        mutates: object = "unknown"
    elif r < 0.5 or not tensor_like:
        mutates = rng.choice([(), [], set()])
    else:
        k = rng.randint(1, len(tensor_like))
        mutates = rng.choice([set, list, tuple])(rng.sample(tensor_like, k))
    op_name = rng.choice([None, None, f"op{index}", f"mylib::op{index}"])
    qual = f"case{index}"
    return Case(
        index,
        _make_fn(j_params, j_ret, qual),
        _make_fn(t_params, t_ret, qual),
        mutates,
        op_name,
        f"[{', '.join(desc)}] order={order} ret={j_ret!r} mutates={mutates!r} op_name={op_name!r}",
    )


CASES = [_make_case(i) for i in range(N_CASES)]


@pytest.mark.parametrize("case", CASES, ids=[f"case{c.index}" for c in CASES])
def test_matches_torch(case: Case) -> None:
    expected = torch_infer_schema(
        case.torch_fn, mutates_args=case.mutates_args, op_name=case.op_name
    )
    got = jaxops.infer_schema(case.jax_fn, mutates_args=case.mutates_args, op_name=case.op_name)
    assert got == expected, case.description
    # And the schema parses into a FunctionSchema that prints the same text.
    s = jaxops.parse_schema(got)
    assert str(s) == got


def test_generator_covers_everything() -> None:
    """The generated cases exercise every type, wrapper, default kind and mutation mode."""
    texts = [
        torch_infer_schema(c.torch_fn, mutates_args=c.mutates_args, op_name=c.op_name)
        for c in CASES
    ]
    blob = "\n".join(texts)
    for needle in [
        "Tensor ",
        "Tensor? ",
        "Tensor[] ",
        "Tensor?[] ",
        "SymInt ",
        "SymInt? ",
        "SymInt[] ",
        "SymInt[]? ",
        "float ",
        "float? ",
        "float[] ",
        "float[]? ",
        "bool ",
        "bool? ",
        "bool[] ",
        "bool[]? ",
        "str ",
        "str? ",
        "Scalar ",
        "Scalar? ",
        "Scalar[] ",
        "ScalarType ",
        "ScalarType? ",
        "Device ",
        "Device? ",
        "=None",
        "=True",
        '="',
        "=float32",
        "=bfloat16",
        '="cpu"',
        "*, ",
        "(a0!)",
        "!)[]",
        "!)?[]",
        "!)?",
        "-> ()",
        "-> ((",
        "-> Tensor[]",
        "-> (Tensor",
        "-> Scalar",
        "op",
        "::",
    ]:
        assert needle in blob, needle
    assert sum(c.mutates_args == "unknown" for c in CASES) >= 20
    assert (
        sum(
            isinstance(c.mutates_args, set | list | tuple) and len(c.mutates_args) > 0
            for c in CASES
        )
        >= 30
    )


def test_verbatim_examples_match_torch() -> None:
    def jf(
        x: jax.Array, y: int, z: bool, a: float, b: jnp.dtype, c: jax.Device, d: Number
    ) -> tuple[jax.Array, int, float, bool]: ...
    def tf(
        x: torch.Tensor,
        y: int,
        z: bool,
        a: float,
        b: torch.dtype,
        c: torch.device,
        d: torch.types.Number,
    ) -> tuple[torch.Tensor, int, float, bool]: ...

    # This module uses ``from __future__ import annotations``: both inferrers resolve strings.
    assert isinstance(jf.__annotations__["x"], str)
    assert (
        jaxops.infer_schema(jf, mutates_args=())
        == torch_infer_schema(tf, mutates_args=())
        == (
            "(Tensor x, SymInt y, bool z, float a, ScalarType b, Device c, Scalar d) -> (Tensor, SymInt, float, bool)"
        )
    )


def _error_pairs() -> list[tuple[str, object, object, object]]:
    P = inspect.Parameter
    T = torch.Tensor
    J = jax.Array

    def both(
        params: list[tuple[str, object, object, object]], ret_j: object = J, ret_t: object = T
    ):
        jp = [P(n, k, annotation=a) if a is not None else P(n, k) for n, k, a, _ in params]
        tp = [P(n, k, annotation=b) if b is not None else P(n, k) for n, k, _, b in params]
        return _make_fn(jp, ret_j, "err"), _make_fn(tp, ret_t, "err")

    PK = P.POSITIONAL_OR_KEYWORD
    out = []
    jf, tf = both([("x", PK, J, T), ("args", P.VAR_POSITIONAL, J, T)])
    out.append(("varargs", jf, tf, ()))
    jf, tf = both([("x", PK, J, T), ("kwargs", P.VAR_KEYWORD, J, T)])
    out.append(("varkwargs", jf, tf, ()))
    jf, tf = both([("x", P.POSITIONAL_ONLY, J, T)])
    out.append(("positional-only", jf, tf, ()))
    jf, tf = both([("x", PK, None, None)])
    out.append(("must have a type annotation", jf, tf, ()))
    jf, tf = both([("x", PK, J, T)], inspect.Signature.empty, inspect.Signature.empty)
    out.append(("No return type annotation was provided", jf, tf, ()))
    jf, tf = both([("x", PK, tuple[int, int], tuple[int, int])])
    out.append((r"For example, list\[int\]", jf, tf, ()))
    jf, tf = both([("x", PK, dict, dict)])
    out.append(("unsupported type", jf, tf, ()))
    jf, tf = both([("x", PK, J, T)], str, str)
    out.append(("unsupported", jf, tf, ()))
    jf, tf = both([("x", PK, J, T)], typing.Optional[J], typing.Optional[T])
    out.append(("unsupported", jf, tf, ()))
    jf, tf = both([("x", PK, J, T), ("n", PK, int, int)])
    out.append(("can be mutated", jf, tf, {"n"}))
    jf, tf = both([("x", PK, J, T)])
    out.append(("in mutates_args were not found", jf, tf, {"nope"}))
    jf, tf = both([("x", PK, J, T)])
    out.append(("mutates_args must either be a sequence", jf, tf, "everything"))
    return out


@pytest.mark.parametrize(("message", "jax_fn", "torch_fn", "mutates"), _error_pairs())
def test_errors_match_torch(
    message: str, jax_fn: object, torch_fn: object, mutates: object
) -> None:
    with pytest.raises(ValueError) as t_info:
        torch_infer_schema(torch_fn, mutates_args=mutates)
    with pytest.raises(ValueError, match=message) as j_info:
        jaxops.infer_schema(jax_fn, mutates_args=mutates, op_name="mylib::f")
    assert "mylib::f" in str(j_info.value)
    del t_info


# API.md vs PyTorch: where they disagree API.md wins. These are excluded from the generator
# above (``_TORCH_VARIANTS`` / no list defaults) and pinned here:
#  * API.md's type table gives ``T[]`` and ``T[]?`` for every supported T. PyTorch's
#    infer_schema has no ``Tensor[]?`` (Optional[Sequence[Tensor]]), no ``str[]``,
#    ``ScalarType[]``, ``Device[]``, and no ``Scalar[]?``; jaxops infers them.
#  * jaxops renders list/tuple defaults (``SymInt[] dims=[0, 1]``) and NumPy scalar defaults,
#    which PyTorch rejects as "unsupported default value type".
#  * jaxops also accepts ``Sequence[jax.Array]`` as a return (``Tensor[]``); PyTorch only
#    accepts ``list``/``List``.
_DIFFERENCES = [
    (
        "Tensor[]?",
        typing.Optional[typing.Sequence[jax.Array]],
        typing.Optional[typing.Sequence[torch.Tensor]],
        None,
    ),
    ("str[]", list[str], list[str], None),
    ("ScalarType[]", list[jnp.dtype], list[torch.dtype], None),
    ("Device[]", list[jax.Device], list[torch.device], None),
    ("Scalar[]?", typing.Optional[list[Number]], typing.Optional[list[torch.types.Number]], None),
    ("SymInt[]", list[int], list[int], ((0, 1), (0, 1))),
    ("float", float, float, (np.float64(0.5), np.float32(0.5))),
]


@pytest.mark.parametrize(("schema_type", "j_ann", "t_ann", "default"), _DIFFERENCES)
def test_documented_differences(
    schema_type: str, j_ann: object, t_ann: object, default: tuple | None
) -> None:
    P = inspect.Parameter
    jd = P.empty if default is None else default[0]
    td = P.empty if default is None else default[1]
    jf = _make_fn([P("v", P.POSITIONAL_OR_KEYWORD, annotation=j_ann, default=jd)], None, "diff")
    tf = _make_fn([P("v", P.POSITIONAL_OR_KEYWORD, annotation=t_ann, default=td)], None, "diff")
    with pytest.raises(ValueError, match="unsupported"):
        torch_infer_schema(tf, mutates_args=())
    got = jaxops.infer_schema(jf, mutates_args=())
    assert got.startswith(f"({schema_type} v")
    jaxops.parse_schema(got)
