"""Tests for jaxops.schema: the FunctionSchema data model and parse_schema."""

from __future__ import annotations

import math
import re

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxops.schema import (
    AliasInfo,
    Argument,
    FunctionSchema,
    Return,
    SchemaParseError,
    SchemaType,
    parse_schema,
)

ROUND_TRIP = [
    "(Tensor x) -> Tensor",
    "foo(Tensor x) -> Tensor",
    "mylib::foo(Tensor x, Tensor y, float alpha=1.0) -> Tensor",
    "mylib::foo.out(Tensor x, *, Tensor(a!) out) -> Tensor(a!)",
    "mylib::foo.Tensor_out(Tensor self, Tensor other, *, Scalar alpha=1, Tensor(a!) out) -> Tensor(a!)",
    "f() -> ()",
    "f(Tensor x) -> ()",
    "f(Tensor x) -> ((Tensor))",
    "f(Tensor x) -> (Tensor)",
    "f(Tensor x) -> (Tensor, Tensor)",
    "f(Tensor x) -> (Tensor values, Tensor indices)",
    "f(Tensor x) -> Tensor out",
    "f(Tensor x) -> Tensor[]",
    "f(Tensor x) -> (Tensor, SymInt, float, bool, Scalar)",
    "(Tensor x, SymInt y, bool z, float a, ScalarType b, Device c, Scalar d) -> (Tensor, SymInt, float, bool)",
    "(Tensor x, Tensor[] y, Tensor? z, Tensor?[] w) -> Tensor[]",
    "(Tensor(a0!) x, Tensor[] y, Tensor(a2!)[] z, Tensor(a3!)?[] w) -> ()",
    "f(Tensor(a) x) -> Tensor(a)",
    "f(SymInt[]? s=None, int[2] k=1, int[] sizes=[1, 2], int[3] pads=[0, 0, 0]) -> ()",
    "f(float a=3.14, float b=-1.5, float c=1e-05, float d=1e+20, float e=inf, float f=-inf, float g=nan) -> ()",
    "f(int a=0, int b=-3, SymInt? c=None, bool d=True, bool e=False) -> ()",
    'f(str e="foo", str g=\'single\', str h="", Device j="cpu") -> ()',
    "f(ScalarType f=float32, ScalarType? g=None, ScalarType h=bfloat16, ScalarType i=long) -> ()",
    "f(Layout? layout=None, MemoryFormat m=contiguous_format, Generator? gen=None) -> ()",
    "f(Tensor x, *, SymInt y, float z) -> Tensor",
    "f(Tensor? x=None, Tensor?[] xs=[], Tensor[] ys=[]) -> ()",
    "f(bool[3] mask=[True, False, True], float[] w=[1.0, 2.5], Scalar s=2) -> ()",
    "f(str[] names, ScalarType[] dtypes, Device? d=None) -> ()",
    "_private::_op._overload(Tensor _x) -> Tensor",
    "f(int reduction=Mean) -> ()",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text: str) -> None:
    s = parse_schema(text)
    assert str(s) == text
    assert parse_schema(str(s)) == s


def test_whitespace_is_insignificant() -> None:
    s = parse_schema(
        "  mylib::foo( Tensor x ,int [ 2 ] k = 1 , * , float? eps=None )->( Tensor , Tensor )  "
    )
    assert str(s) == "mylib::foo(Tensor x, int[2] k=1, *, float? eps=None) -> (Tensor, Tensor)"


def test_names_and_overloads() -> None:
    s = parse_schema("mylib::foo.overload(Tensor x) -> Tensor")
    assert s.name == "mylib::foo"
    assert s.overload_name == "overload"
    assert s.qualname == "mylib::foo.overload"
    assert s.namespace == "mylib"
    assert s.op_name == "foo"
    anon = parse_schema("(Tensor x) -> Tensor")
    assert (anon.name, anon.overload_name, anon.namespace, anon.qualname) == ("", "", "", "")
    plain = parse_schema("foo(Tensor x) -> Tensor")
    assert (plain.name, plain.namespace, plain.op_name) == ("foo", "", "foo")
    renamed = anon.with_name("ns::bar", "out")
    assert str(renamed) == "ns::bar.out(Tensor x) -> Tensor"


def test_data_model_fields() -> None:
    s = parse_schema(
        "ns::f(Tensor(a0!) x, Tensor(b)[] ys, Tensor(c!)?[] zs, SymInt[4]? s=None, *, float eps=1e-05) "
        "-> (Tensor values, SymInt n)"
    )
    x, ys, zs, sz, eps = s.arguments
    assert x == Argument("x", SchemaType("Tensor", alias=AliasInfo("a0", True)))
    assert ys.type == SchemaType("Tensor", is_list=True, alias=AliasInfo("b", False))
    assert zs.type == SchemaType(
        "Tensor", is_list=True, elem_optional=True, alias=AliasInfo("c", True)
    )
    assert sz.type == SchemaType("SymInt", optional=True, is_list=True, list_size=4)
    assert sz.default == "None" and sz.default_value is None
    assert eps.kwarg_only and eps.default == "1e-05"
    assert [a.name for a in s.positional_arguments] == ["x", "ys", "zs", "s"]
    assert [a.name for a in s.kwarg_only_arguments] == ["eps"]
    assert s.argument_names == ("x", "ys", "zs", "s", "eps")
    assert s.argument("ys") is ys
    assert s.mutated_arg_names == ("x", "zs")
    assert s.is_mutable
    assert s.returns == (Return(SchemaType("Tensor"), "values"), Return(SchemaType("SymInt"), "n"))
    assert s.returns_tuple
    assert x.type.is_tensor_like and not sz.type.is_tensor_like
    assert zs.type.element == SchemaType("Tensor", optional=True, alias=AliasInfo("c", True))
    with pytest.raises(KeyError, match="has no argument 'nope'"):
        s.argument("nope")


@pytest.mark.parametrize(
    ("ret", "returns_tuple", "n"),
    [
        ("Tensor", False, 1),
        ("(Tensor)", True, 1),
        ("((Tensor))", True, 1),
        ("()", True, 0),
        ("(Tensor, Tensor)", True, 2),
    ],
)
def test_returns_tuple(ret: str, returns_tuple: bool, n: int) -> None:
    s = parse_schema(f"f(Tensor x) -> {ret}")
    assert s.returns_tuple is returns_tuple
    assert len(s.returns) == n


def test_single_tuple_spellings_are_equal() -> None:
    assert parse_schema("f(Tensor x) -> (Tensor)") == parse_schema("f(Tensor x) -> ((Tensor))")
    built = FunctionSchema(
        "f", "", (Argument("x", SchemaType("Tensor")),), (Return(SchemaType("Tensor")),), True
    )
    assert str(built) == "f(Tensor x) -> ((Tensor))"


@pytest.mark.parametrize(
    ("ty", "text"),
    [
        (SchemaType("Tensor", is_list=True, alias=AliasInfo("a2", True)), "Tensor(a2!)[]"),
        (
            SchemaType("Tensor", is_list=True, elem_optional=True, alias=AliasInfo("a3", True)),
            "Tensor(a3!)?[]",
        ),
        (SchemaType("SymInt", optional=True, is_list=True), "SymInt[]?"),
        (SchemaType("int", is_list=True, list_size=2), "int[2]"),
        (SchemaType("Tensor", optional=True), "Tensor?"),
        (SchemaType("Tensor", alias=AliasInfo("a", False)), "Tensor(a)"),
    ],
)
def test_schema_type_str(ty: SchemaType, text: str) -> None:
    assert str(ty) == text


def test_schema_type_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="need is_list=True"):
        SchemaType("int", list_size=2)


def test_function_schema_validates() -> None:
    t = SchemaType("Tensor")
    with pytest.raises(ValueError, match="needs exactly one return"):
        FunctionSchema("f", "", (), (), False)
    with pytest.raises(ValueError, match="duplicate argument 'x'"):
        FunctionSchema("f", "", (Argument("x", t), Argument("x", t)), (Return(t),), False)


# ---------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("float b=1.0", 1.0),
        ("float b=3", 3.0),
        ("float b=-2.5e-3", -0.0025),
        ("float b=inf", math.inf),
        ("float b=-inf", -math.inf),
        ("SymInt? a=None", None),
        ("int a=-7", -7),
        ("int r=Mean", 1),
        ('str e="foo"', "foo"),
        ("str e='it\\'s'", "it's"),
        ('str e="a\\"b\\\\c\\n"', 'a"b\\c\n'),
        ('Device j="cpu"', "cpu"),
        ("int[] s=[1, 2]", [1, 2]),
        ("int[] s=[]", []),
        ("int[2] s=3", [3, 3]),
        ("bool[2] m=[True, False]", [True, False]),
        ("float[] w=[1, 2.5]", [1.0, 2.5]),
        ("bool b=True", True),
        ("bool b=False", False),
        ("Scalar s=1", 1),
        ("Scalar s=1.5", 1.5),
        ("Scalar s=True", True),
        ("Layout l=strided", "strided"),
        ("MemoryFormat m=contiguous_format", "contiguous_format"),
        ("Tensor? t=None", None),
        ("Tensor?[] t=[None]", [None]),
    ],
)
def test_default_value(arg: str, value: object) -> None:
    (a,) = parse_schema(f"f({arg}) -> ()").arguments
    assert a.default == arg.split("=", 1)[1]
    got = a.default_value
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("float32", jnp.float32),
        ("float", jnp.float32),
        ("float64", jnp.float64),
        ("double", jnp.float64),
        ("bfloat16", jnp.bfloat16),
        ("half", jnp.float16),
        ("int64", jnp.int64),
        ("long", jnp.int64),
        ("int32", jnp.int32),
        ("uint8", jnp.uint8),
        ("bool", jnp.bool_),
        ("complex64", jnp.complex64),
    ],
)
def test_dtype_defaults(name: str, dtype: object) -> None:
    (a,) = parse_schema(f"f(ScalarType d={name}) -> ()").arguments
    assert a.default == name
    assert isinstance(a.default_value, np.dtype)
    assert a.default_value == jnp.dtype(dtype)


def test_default_value_without_default_raises() -> None:
    (a,) = parse_schema("f(Tensor x) -> ()").arguments
    assert not a.has_default
    with pytest.raises(ValueError, match="argument 'x' has no default value"):
        a.default_value  # noqa: B018


def test_default_value_of_hand_built_argument_is_checked() -> None:
    a = Argument("d", SchemaType("ScalarType"), "nope")
    with pytest.raises(ValueError, match="unknown dtype 'nope'"):
        a.default_value  # noqa: B018
    assert Argument("d", SchemaType("ScalarType"), "float32").default_value == jnp.float32


def test_default_lists_are_fresh() -> None:
    (a,) = parse_schema("f(int[] s=[1, 2]) -> ()").arguments
    a.default_value.append(3)
    assert a.default_value == [1, 2]


# ---------------------------------------------------------------- errors


def _err(text: str) -> SchemaParseError:
    with pytest.raises(SchemaParseError) as info:
        parse_schema(text)
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("f(Tensor x -> Tensor", "expected ',' or ')'", 11),
        ("f(Tensor x) Tensor", "expected '->'", 12),
        ("f(Tensor x) -> ", "expected a type but found end of input", 15),
        ("f(Tensor x, ) -> ()", "expected a type", 12),
        ("f(Tensor) -> ()", "expected an argument name", 8),
        ("f(Tensor x) -> Tensor junk more", "unexpected trailing text", 27),
        ("f(Foo x) -> ()", "unknown type 'Foo'", 2),
        ("f(Tensor x) -> Bar", "unknown type 'Bar'", 15),
        ("f(Tensor x, Tensor x) -> ()", "duplicate argument name 'x'", 19),
        ("f(Tensor x) -> (Tensor a, Tensor a)", "duplicate return name 'a'", 33),
        ("f(Tensor x, *, *, Tensor y) -> ()", "'*' may appear only once", 15),
        ("f(Tensor x, *) -> ()", "'*' must be followed by keyword-only arguments", 12),
        ("f(Tensor(a -> *) x) -> ()", "are not supported", 11),
        ("f(Tensor(*) x) -> ()", "wildcard alias sets", 9),
        ("f(Tensor(a|b) x) -> ()", "are not supported", 10),
        ("f(int(a) x) -> ()", "alias annotations are only supported on Tensor types", 2),
        ("f(int[][] x) -> ()", "nested lists are not supported", 7),
        ("f(int[0] x) -> ()", "list size must be positive", 6),
        ("f(int?? x) -> ()", "unexpected '?'", 6),
        ("f(Tensor x=3) -> ()", "Tensor arguments can only default to None", 11),
        ("f(Tensor x=None) -> ()", "non-optional Tensor cannot default to None", 11),
        ("f(int x=1.5) -> ()", "expected an integer default", 8),
        ("f(bool x=yes) -> ()", "expected True or False", 9),
        ("f(str x=foo) -> ()", "expected a quoted string", 8),
        ("f(ScalarType d=floaty) -> ()", "unknown dtype 'floaty'", 15),
        ("f(int[2] k=[1, 2, 3]) -> ()", "expected 2 elements", 11),
        ("f(int[] k=1) -> ()", "expected a list default", 10),
        ("f(int[] k=[[1]]) -> ()", "nested lists are not supported in defaults", 11),
        ('f(str s="abc) -> ()', "unterminated string literal", 8),
        ('f(str s="a\\q") -> ()', "unknown escape sequence", 10),
        ("f(float x=) -> ()", "expected a default value", 10),
        ("f(float x=-foo) -> ()", "expected a default value", 10),
        ("::f(Tensor x) -> ()", "expected an operator name or '('", 0),
        ("ns::(Tensor x) -> ()", "expected an operator name after '::'", 4),
        ("f.(Tensor x) -> ()", "expected an overload name after '.'", 2),
        ("f(Tensor x) -> ((Tensor), Tensor)", "closing a one-element tuple", 24),
        ("", "expected an operator name or '('", 0),
    ],
)
def test_errors_show_position(text: str, message: str, position: int) -> None:
    e = _err(text)
    msg = str(e)
    assert message in msg
    assert e.position == position
    assert f"at position {position}" in msg
    lines = msg.splitlines()
    # The text, then a caret under the offending character.
    assert lines[-2] == "    " + text
    assert lines[-1] == "    " + " " * position + "^"


def test_int64_t_hint() -> None:
    msg = str(_err("f(Tensor x, int64_t n) -> Tensor"))
    assert "unknown type 'int64_t'" in msg
    assert "Use `SymInt` or `int`" in msg
    assert "at position 12" in msg


def test_double_hint() -> None:
    msg = str(_err("f(Tensor x, double eps=1e-05) -> Tensor"))
    assert "unknown type 'double'" in msg
    assert "Use `float`" in msg


@pytest.mark.parametrize(
    ("spelling", "hint"),
    [
        ("std::string", "Use `str`"),
        ("jax.Array", "Use `Tensor`"),
        ("long", "Use `SymInt` or `int`"),
    ],
)
def test_other_type_hints(spelling: str, hint: str) -> None:
    msg = str(_err(f"f({spelling} x) -> ()"))
    assert f"unknown type {spelling!r}" in msg
    assert hint in msg


def test_pytest_match_on_hints() -> None:
    with pytest.raises(ValueError, match=re.escape("Use `SymInt` or `int`")):
        parse_schema("foo(int64_t x) -> ()")
    with pytest.raises(ValueError, match=re.escape("Use `float`")):
        parse_schema("foo(double x) -> ()")


def test_newlines_keep_the_caret_aligned() -> None:
    msg = str(_err("f(Tensor x,\n  Foo y) -> ()"))
    assert msg.splitlines()[-1] == "    " + " " * 14 + "^"


def test_non_string_input() -> None:
    with pytest.raises(TypeError, match="expects a str"):
        parse_schema(123)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzz

_FUZZ_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _check_parses_or_clean_error(text: str) -> None:
    try:
        s = parse_schema(text)
    except (ValueError, RuntimeError) as e:
        assert str(e).strip()
        return
    # Whatever parses must print to something that parses back to the same schema.
    assert parse_schema(str(s)) == s
    for arg in s.arguments:
        if arg.default is not None:
            arg.default_value  # noqa: B018


_ALPHABET = st.sampled_from(list("()[]?!*,=-> .:\"'0123456789aeftxTensorSymIntfloatbool_\\\n"))


@_FUZZ_SETTINGS
@given(st.text(max_size=60))
def test_fuzz_arbitrary_text(text: str) -> None:
    _check_parses_or_clean_error(text)


@_FUZZ_SETTINGS
@given(st.lists(_ALPHABET, max_size=60).map("".join))
def test_fuzz_schema_alphabet(text: str) -> None:
    _check_parses_or_clean_error(text)


@_FUZZ_SETTINGS
@given(
    st.sampled_from(ROUND_TRIP),
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "insert", "replace"]), st.integers(0, 200), st.characters()
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_mutated_valid_schemas(text: str, edits: list[tuple[str, int, str]]) -> None:
    chars = list(text)
    for op, i, c in edits:
        i = i % (len(chars) + 1)
        if op == "insert":
            chars.insert(i, c)
        elif chars and i < len(chars):
            if op == "delete":
                del chars[i]
            else:
                chars[i] = c
    _check_parses_or_clean_error("".join(chars))


# The same fuzzers, 50x longer: `nox -s slow` (pytest -m slow).
_SLOW_FUZZ = settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@_SLOW_FUZZ
@given(st.lists(_ALPHABET, max_size=120).map("".join))
def test_slow_fuzz_schema_alphabet(text: str) -> None:
    _check_parses_or_clean_error(text)


@pytest.mark.slow
@_SLOW_FUZZ
@given(
    st.sampled_from(ROUND_TRIP),
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "insert", "replace"]), st.integers(0, 200), st.characters()
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_slow_fuzz_mutated_valid_schemas(text: str, edits: list[tuple[str, int, str]]) -> None:
    test_fuzz_mutated_valid_schemas.hypothesis.inner_test(text, edits)
