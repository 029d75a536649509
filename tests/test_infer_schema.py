# ruff: noqa: UP006, UP007, UP035, UP045, F722, F821 - typing.Optional/List and jaxtyping shape strings are tested on purpose
"""Tests for jaxops.infer_schema (API.md section 1, "Schema inference")."""

import re
import typing
from collections.abc import Sequence
from typing import List, Optional  # noqa: UP035

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float, Int, Shaped

import jaxops
from jaxops import FunctionSchema, infer_schema
from jaxops.inference import infer_function_schema
from jaxops.types import Number


def _sig(
    annotations: dict[str, object],
    ret: object = jax.Array,
    defaults: dict | None = None,
    kwonly: tuple[str, ...] = (),
):
    """A function with the given parameter annotations (in order) and return annotation."""
    import inspect

    defaults = defaults or {}
    params = []
    for name, ann in annotations.items():
        kind = (
            inspect.Parameter.KEYWORD_ONLY
            if name in kwonly
            else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        default = defaults.get(name, inspect.Parameter.empty)
        params.append(inspect.Parameter(name, kind, annotation=ann, default=default))

    def fn(*args, **kwargs):  # pragma: no cover - never called
        raise AssertionError

    fn.__signature__ = inspect.Signature(params, return_annotation=ret)
    fn.__qualname__ = "made_up_fn"
    return fn


def _one(ann: object) -> str:
    return infer_schema(_sig({"x": ann}), mutates_args=())


# ---------------------------------------------------------------- verbatim examples


def test_verbatim_example_scalars() -> None:
    def f(
        x: jax.Array, y: int, z: bool, a: float, b: jnp.dtype, c: jax.Device, d: Number
    ) -> tuple[jax.Array, int, float, bool]: ...

    assert infer_schema(f, mutates_args=()) == (
        "(Tensor x, SymInt y, bool z, float a, ScalarType b, Device c, Scalar d) -> (Tensor, SymInt, float, bool)"
    )


def test_verbatim_example_lists() -> None:
    def f(
        x: jax.Array,
        y: Sequence[jax.Array],
        z: Optional[jax.Array],
        w: Sequence[Optional[jax.Array]],
    ) -> List[jax.Array]: ...  # noqa: UP006, UP045

    assert (
        infer_schema(f, mutates_args=())
        == "(Tensor x, Tensor[] y, Tensor? z, Tensor?[] w) -> Tensor[]"
    )


def test_verbatim_example_mutation() -> None:
    def f(
        x: jax.Array,
        y: Sequence[jax.Array],
        z: Sequence[jax.Array],
        w: Sequence[Optional[jax.Array]],
    ) -> None: ...  # noqa: UP045

    assert infer_schema(f, mutates_args={"x", "z", "w"}) == (
        "(Tensor(a0!) x, Tensor[] y, Tensor(a2!)[] z, Tensor(a3!)?[] w) -> ()"
    )


def test_api_md_first_example() -> None:
    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    assert (
        infer_schema(scale_add, mutates_args=())
        == "(Tensor x, Tensor y, float alpha=1.0) -> Tensor"
    )
    assert jaxops.infer_schema is infer_schema


# ---------------------------------------------------------------- type table


@pytest.mark.parametrize(
    ("ann", "expected"),
    [
        (jax.Array, "Tensor"),
        (jnp.ndarray, "Tensor"),
        (np.ndarray, "Tensor"),
        (Array, "Tensor"),
        (Float[Array, "b n"], "Tensor"),
        (Int[Array, ""], "Tensor"),
        (Shaped[Array, "..."], "Tensor"),
        (Float[np.ndarray, "n"], "Tensor"),
        (int, "SymInt"),
        (float, "float"),
        (bool, "bool"),
        (str, "str"),
        (Number, "Scalar"),
        (int | float | bool, "Scalar"),
        (typing.Union[int, float, bool], "Scalar"),  # noqa: UP007
        (jnp.dtype, "ScalarType"),
        (np.dtype, "ScalarType"),
        (jax.typing.DTypeLike, "ScalarType"),
        (jax.Device, "Device"),
        # optionals
        (Optional[jax.Array], "Tensor?"),  # noqa: UP045
        (jax.Array | None, "Tensor?"),
        (Optional[Float[Array, "n"]], "Tensor?"),  # noqa: UP045
        (int | None, "SymInt?"),
        (Optional[float], "float?"),  # noqa: UP045
        (bool | None, "bool?"),
        (str | None, "str?"),
        (Optional[Number], "Scalar?"),  # noqa: UP045
        (jnp.dtype | None, "ScalarType?"),
        (Optional[jax.typing.DTypeLike], "ScalarType?"),  # noqa: UP045
        (jax.Device | None, "Device?"),
        # lists
        (Sequence[jax.Array], "Tensor[]"),
        (list[jax.Array], "Tensor[]"),
        (List[jax.Array], "Tensor[]"),  # noqa: UP006
        (typing.Sequence[jax.Array], "Tensor[]"),  # noqa: UP006
        (list[Float[Array, "n"]], "Tensor[]"),
        (Sequence[Optional[jax.Array]], "Tensor?[]"),  # noqa: UP045
        (list[jax.Array | None], "Tensor?[]"),
        (Sequence[int], "SymInt[]"),
        (list[float], "float[]"),
        (List[bool], "bool[]"),  # noqa: UP006
        (Sequence[Number], "Scalar[]"),
        (Optional[Sequence[int]], "SymInt[]?"),  # noqa: UP045
        (list[float] | None, "float[]?"),
        (Optional[List[bool]], "bool[]?"),  # noqa: UP006, UP045
        # API.md's general "T[]" / "T[]?" rows (PyTorch supports fewer of these).
        (Optional[Sequence[jax.Array]], "Tensor[]?"),  # noqa: UP045
        (list[str], "str[]"),
    ],
)
def test_param_types(ann: object, expected: str) -> None:
    assert _one(ann) == f"({expected} x) -> Tensor"


@pytest.mark.parametrize(
    ("ret", "expected"),
    [
        (jax.Array, "Tensor"),
        (Float[Array, "m n"], "Tensor"),
        (np.ndarray, "Tensor"),
        (list[jax.Array], "Tensor[]"),
        (List[jax.Array], "Tensor[]"),  # noqa: UP006
        (int, "SymInt"),
        (float, "float"),
        (bool, "bool"),
        (Number, "Scalar"),
        (None, "()"),
        (type(None), "()"),
        (tuple[jax.Array, jax.Array], "(Tensor, Tensor)"),
        (typing.Tuple[jax.Array, int], "(Tensor, SymInt)"),  # noqa: UP006
        (tuple[jax.Array, list[jax.Array], Number, bool], "(Tensor, Tensor[], Scalar, bool)"),
        (tuple[jax.Array], "((Tensor))"),  # PyTorch's spelling of a 1-tuple
        (tuple[()], "()"),
    ],
)
def test_return_types(ret: object, expected: str) -> None:
    assert infer_schema(_sig({"x": jax.Array}, ret), mutates_args=()) == f"(Tensor x) -> {expected}"


def test_one_tuple_return_parses_as_tuple() -> None:
    s = infer_function_schema(_sig({"x": jax.Array}, tuple[jax.Array]), mutates_args=())
    assert s.returns_tuple and len(s.returns) == 1


# ---------------------------------------------------------------- format


def test_kwarg_only_and_op_name() -> None:
    def f(x: jax.Array, *, y: int, z: float) -> jax.Array: ...

    assert infer_schema(f, mutates_args=()) == "(Tensor x, *, SymInt y, float z) -> Tensor"
    assert (
        infer_schema(f, mutates_args=(), op_name="myop")
        == "myop(Tensor x, *, SymInt y, float z) -> Tensor"
    )
    assert (
        infer_schema(f, mutates_args=(), op_name="mylib::myop")
        == "mylib::myop(Tensor x, *, SymInt y, float z) -> Tensor"
    )


def test_kwarg_only_tensor_is_allowed_here() -> None:
    # PyTorch's infer_schema allows kwarg-only Tensors; custom_op is the one that refuses them.
    def f(x: jax.Array, *, out: jax.Array) -> None: ...

    assert infer_schema(f, mutates_args={"out"}) == "(Tensor x, *, Tensor(a1!) out) -> ()"


@pytest.mark.parametrize(
    ("ann", "default", "rendered"),
    [
        (float, 3.14, "float b=3.14"),
        (float, 1e-05, "float b=1e-05"),
        (float, 1e20, "float b=1e+20"),
        (float, -2.0, "float b=-2.0"),
        (float, float("inf"), "float b=inf"),
        (float, 3, "float b=3"),
        (Optional[int], None, "SymInt? b=None"),  # noqa: UP045
        (int, -1, "SymInt b=-1"),
        (int, np.int64(4), "SymInt b=4"),
        (float, np.float32(0.5), "float b=0.5"),
        (bool, True, "bool b=True"),
        (bool, np.bool_(False), "bool b=False"),
        (Number, 2, "Scalar b=2"),
        (str, "foo", 'str b="foo"'),
        (str, 'say "hi"', 'str b="say \\"hi\\""'),
        (jnp.dtype, jnp.float32, "ScalarType b=float32"),
        (jnp.dtype, np.float64, "ScalarType b=float64"),
        (jnp.dtype, jnp.dtype("int32"), "ScalarType b=int32"),
        (jnp.dtype, jnp.bfloat16, "ScalarType b=bfloat16"),
        (jnp.dtype, jnp.bool_, "ScalarType b=bool"),
        (Optional[jnp.dtype], None, "ScalarType? b=None"),  # noqa: UP045
        (jax.Device, "cpu", 'Device b="cpu"'),
        (Optional[jax.Array], None, "Tensor? b=None"),  # noqa: UP045
        (Sequence[int], (1, 2), "SymInt[] b=[1, 2]"),
        (list[float], [0.5], "float[] b=[0.5]"),
    ],
)
def test_defaults(ann: object, default: object, rendered: str) -> None:
    fn = _sig({"a": jax.Array, "b": ann}, defaults={"b": default})
    text = infer_schema(fn, mutates_args=())
    assert text == f"(Tensor a, {rendered}) -> Tensor"
    # Whatever infer_schema renders parses back, with the same default value.
    (_, b) = infer_function_schema(fn, mutates_args=()).arguments
    if isinstance(default, float | np.floating) and np.isnan(default):
        return
    value = b.default_value
    if isinstance(default, tuple):
        assert value == list(default)
    elif ann is jnp.dtype:
        assert value == jnp.dtype(default)
    else:
        assert value == default


def test_device_object_default() -> None:
    dev = jax.devices("cpu")[0]
    fn = _sig({"d": jax.Device}, defaults={"d": dev})
    assert infer_schema(fn, mutates_args=()) == f'(Device d="cpu:{dev.id}") -> Tensor'


def test_every_default_kind_in_one_signature() -> None:
    def f(
        x: Float[Array, "b n"],
        a: Optional[int] = None,  # noqa: UP045
        b: float = 3.14,
        e: str = "foo",
        f: jnp.dtype = jnp.float32,
        j: jax.Device = "cpu",
        k: bool = True,
        *,
        n: Number = 1.5,
    ) -> jax.Array: ...

    text = infer_schema(f, mutates_args=(), op_name="mylib::f")
    assert text == (
        'mylib::f(Tensor x, SymInt? a=None, float b=3.14, str e="foo", ScalarType f=float32, '
        'Device j="cpu", bool k=True, *, Scalar n=1.5) -> Tensor'
    )
    s = infer_function_schema(f, mutates_args=(), op_name="mylib::f")
    assert isinstance(s, FunctionSchema)
    assert str(s) == text
    assert [a.default_value for a in s.arguments[1:]] == [
        None,
        3.14,
        "foo",
        jnp.float32,
        "cpu",
        True,
        1.5,
    ]


# ---------------------------------------------------------------- mutation


def test_mutates_unknown_marks_every_tensor_like() -> None:
    def f(
        x: jax.Array,
        n: int,
        y: Optional[jax.Array],  # noqa: UP045
        ys: list[jax.Array],
        zs: Sequence[Optional[jax.Array]],  # noqa: UP045
        s: str,
        *,
        out: jax.Array,
    ) -> None: ...

    assert infer_schema(f, mutates_args="unknown") == (
        "(Tensor(a0!) x, SymInt n, Tensor(a2!)? y, Tensor(a3!)[] ys, Tensor(a4!)?[] zs, str s, "
        "*, Tensor(a6!) out) -> ()"
    )


def test_mutates_subset_and_iterables() -> None:
    def f(x: jax.Array, y: jax.Array, z: jax.Array) -> None: ...

    expected = "(Tensor x, Tensor(a1!) y, Tensor z) -> ()"
    assert infer_schema(f, mutates_args={"y"}) == expected
    assert infer_schema(f, mutates_args=["y"]) == expected
    assert infer_schema(f, mutates_args=iter(["y"])) == expected
    assert infer_schema(f, mutates_args=("y", "y")) == expected
    assert infer_schema(f, mutates_args=()) == "(Tensor x, Tensor y, Tensor z) -> ()"
    assert infer_schema(f, mutates_args={}) == "(Tensor x, Tensor y, Tensor z) -> ()"


def test_mutated_arg_names_through_function_schema() -> None:
    def f(x: jax.Array, y: jax.Array) -> jax.Array: ...

    s = infer_function_schema(f, mutates_args={"y"}, op_name="ns::f")
    assert s.mutated_arg_names == ("y",)
    assert s.name == "ns::f"


# ---------------------------------------------------------------- errors


def _raises(fn, message: str, *, mutates_args=(), op_name=None, exc=ValueError) -> str:
    with pytest.raises(exc, match=message) as info:
        infer_schema(fn, mutates_args=mutates_args, op_name=op_name)
    return str(info.value)


def test_varargs() -> None:
    def f(x: jax.Array, *args: jax.Array) -> jax.Array: ...

    msg = _raises(f, "varargs", op_name="mylib::f")
    assert "mylib::f" in msg and "*args" in msg


def test_varkwargs() -> None:
    def f(x: jax.Array, **kwargs: jax.Array) -> jax.Array: ...

    msg = _raises(f, "varkwargs")
    assert "test_varkwargs.<locals>.f" in msg and "**kwargs" in msg


def test_positional_only() -> None:
    def f(x: jax.Array, /) -> jax.Array: ...

    _raises(f, "Parameter x is positional-only")


def test_missing_annotation() -> None:
    def f(x: jax.Array, y) -> jax.Array: ...

    msg = _raises(f, "must have a type annotation", op_name="mylib::f")
    assert "Parameter y must have a type annotation" in msg and "mylib::f" in msg


def test_missing_return_annotation() -> None:
    def f(x: jax.Array): ...

    msg = _raises(f, "No return type annotation was provided", op_name="mylib::f")
    assert "mylib::f" in msg


@pytest.mark.parametrize(
    "ann",
    [
        dict,
        object,
        list,
        typing.Any,
        Sequence[Sequence[int]],
        Sequence[Optional[int]],  # noqa: UP045 - optional elements only for arrays
        int | str,
        dict[str, int],
        complex,
    ],
)
def test_unsupported_param_type(ann: object) -> None:
    msg = _raises(_sig({"x": jax.Array, "bad": ann}), "unsupported type", op_name="mylib::f")
    assert "Parameter bad has unsupported type" in msg
    assert "mylib::f" in msg


@pytest.mark.parametrize(
    ("ann", "hint"),
    [
        (tuple[int, int], "list[int]"),
        (tuple[int, ...], "list[int]"),
        (typing.Tuple[float], "list[float]"),  # noqa: UP006
        (tuple[jax.Array, jax.Array], "list[jax.Array]"),
    ],
)
def test_tuple_param_suggests_list(ann: object, hint: str) -> None:
    msg = _raises(_sig({"x": ann}), "unsupported type")
    assert f"For example, {hint}." in msg
    assert "We do not support Tuple inputs" in msg


def test_tuple_int_int_hint_exact() -> None:
    def f(x: jax.Array, shape: tuple[int, int]) -> jax.Array: ...

    _raises(f, re.escape("For example, list[int]"))


def test_tuple_without_supported_list_has_no_example() -> None:
    msg = _raises(_sig({"x": tuple[int, str]}), "unsupported type")
    assert "For example" not in msg


@pytest.mark.parametrize(
    "ret",
    [
        str,
        dict,
        Optional[jax.Array],
        tuple[jax.Array, str],
        tuple[jax.Array, ...],
        jnp.dtype,
        tuple,
        Sequence[int],
        tuple[tuple[jax.Array]],
    ],  # noqa: UP045
)
def test_unsupported_return(ret: object) -> None:
    msg = _raises(_sig({"x": jax.Array}, ret), "unsupported", op_name="mylib::f")
    assert "Return has unsupported type" in msg and "mylib::f" in msg


def test_mutated_non_array() -> None:
    def f(x: jax.Array, n: int) -> None: ...

    msg = _raises(f, "can be mutated", mutates_args={"n"}, op_name="mylib::f")
    assert "Parameter n is in mutates_args" in msg and "mylib::f" in msg


def test_mutated_name_not_found() -> None:
    def f(x: jax.Array) -> None: ...

    msg = _raises(f, "in mutates_args were not found", mutates_args={"y"}, op_name="mylib::f")
    assert "{'y'}" in msg and "mylib::f" in msg


@pytest.mark.parametrize("bad", ["x", "all", ""])
def test_mutates_args_other_string(bad: str) -> None:
    def f(x: jax.Array) -> None: ...

    _raises(f, "mutates_args must either be a sequence", mutates_args=bad)


@pytest.mark.parametrize("bad", [None, 3, [1]])
def test_mutates_args_not_names(bad: object) -> None:
    def f(x: jax.Array) -> None: ...

    _raises(f, "mutates_args must", mutates_args=bad)


@pytest.mark.parametrize("default", [object(), {"a": 1}, 1j, [object()], jnp.zeros(2)])
def test_unrenderable_default(default: object) -> None:
    fn = _sig({"x": jax.Array, "opt": float}, defaults={"opt": default})
    msg = _raises(fn, "unsupported default value type", op_name="mylib::f")
    assert "Parameter opt" in msg and "mylib::f" in msg


def test_unsupported_dtype_default() -> None:
    fn = _sig({"d": jnp.dtype}, defaults={"d": np.dtype("datetime64[s]")})
    _raises(fn, "Parameter d has an unsupported dtype default 'datetime64")


def test_inferred_schema_that_does_not_parse() -> None:
    # PyTorch renders this without complaint; turning it into a FunctionSchema fails clearly.
    fn = _sig({"x": int}, defaults={"x": 1.5})
    assert infer_schema(fn, mutates_args=()) == "(SymInt x=1.5) -> Tensor"
    with pytest.raises(
        ValueError, match=r"infer_schema\(ns::f\): the inferred schema .* is not valid"
    ):
        infer_function_schema(fn, mutates_args=(), op_name="ns::f")


# ---------------------------------------------------------------- string annotations

_FUTURE_SRC = """
from __future__ import annotations
from typing import Optional, Sequence
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float
from jaxops.types import Number

MyArray = jax.Array

def f(x: Float[Array, "b n"], ys: Sequence[MyArray], n: Optional[int] = None,
      d: jnp.dtype = jnp.float32, s: Number = 2) -> tuple[jax.Array, list[jax.Array]]:
    ...

def g(x: jax.Array, y: list["jax.Array"], z: "Optional[MyArray]") -> "jax.Array":
    ...

def bad(x: NotDefinedAnywhere) -> jax.Array:
    ...

def bad_return(x: jax.Array) -> NotDefinedEither:
    ...
"""


@pytest.fixture(scope="module")
def future_ns() -> dict:
    ns: dict = {"__name__": "stringy_module"}
    exec(compile(_FUTURE_SRC, "stringy_module.py", "exec"), ns)
    return ns


def test_string_annotations_resolve_in_module(future_ns: dict) -> None:
    assert isinstance(future_ns["f"].__annotations__["x"], str)
    assert infer_schema(future_ns["f"], mutates_args={"ys"}) == (
        "(Tensor x, Tensor(a1!)[] ys, SymInt? n=None, ScalarType d=float32, Scalar s=2) -> (Tensor, Tensor[])"
    )


def test_partially_stringified_annotations(future_ns: dict) -> None:
    assert (
        infer_schema(future_ns["g"], mutates_args=())
        == "(Tensor x, Tensor[] y, Tensor? z) -> Tensor"
    )


def test_unresolvable_string_annotation(future_ns: dict) -> None:
    msg = _raises(
        future_ns["bad"], "unsupported type annotation 'NotDefinedAnywhere'", op_name="mylib::bad"
    )
    assert "Parameter x" in msg and "NameError" in msg and "mylib::bad" in msg
    _raises(future_ns["bad_return"], "unsupported type annotation 'NotDefinedEither'")


def test_string_annotations_fall_back_to_jax_names() -> None:
    # A module that never imported jax / jaxtyping can still spell its annotations as strings.
    ns: dict = {"__name__": "bare_module"}
    exec(
        "def f(x: 'jax.Array', y: 'Float[Array, \"n\"]', n: 'Optional[int]', d: 'jnp.dtype') -> 'jax.Array': ...",
        ns,
    )
    assert (
        infer_schema(ns["f"], mutates_args=())
        == "(Tensor x, Tensor y, SymInt? n, ScalarType d) -> Tensor"
    )


def test_module_names_shadow_fallbacks() -> None:
    ns: dict = {"__name__": "shadow_module", "Array": int}
    exec("def f(x: 'Array') -> 'Array': ...", ns)
    assert infer_schema(ns["f"], mutates_args=()) == "(SymInt x) -> SymInt"


def test_annotated_is_unwrapped() -> None:
    fn = _sig({"x": typing.Annotated[jax.Array, "meta"]})
    assert infer_schema(fn, mutates_args=()) == "(Tensor x) -> Tensor"


_SELF = "_SELF"
_PING = "_PONG"
_PONG = "_PING"


def test_self_referential_string_annotations_are_a_value_error():
    def f(x: _SELF) -> jax.Array:
        return x

    def g(x: "_PING") -> jax.Array:
        return x

    with pytest.raises(ValueError, match="refers to itself"):
        jaxops.infer_schema(f, mutates_args=())
    with pytest.raises(ValueError, match="'_PING' -> '_PONG' -> '_PING'"):
        jaxops.infer_schema(g, mutates_args=())
