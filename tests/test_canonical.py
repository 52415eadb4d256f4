import math

import pytest
from pydantic import BaseModel

from protocol.canonical import canonical_json


def test_keys_sorted_and_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [1, 2, {"d": None, "c": True}]}) == (b'{"a":[1,2,{"c":true,"d":null}],"b":1}')


def test_rfc8785_section_3_2_3_key_sorting_by_utf16() -> None:
    # RFC 8785 §3.2.3: keys sort by UTF-16 code units, so U+1F600 (a surrogate pair starting
    # 0xD83D) sorts before U+FB33, unlike a sort by code point.
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    out = canonical_json({key: 0 for key in keys}).decode("utf-8")
    expected = ["\\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert out == "{" + ",".join(f'"{key}":0' for key in expected) + "}"


def test_rfc8785_section_3_2_2_sample() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": '€$\u000f\nA\'B"\\\\"/',
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (12.5, "12.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (9007199254740991, "9007199254740991"),
        (-5, "-5"),
    ],
)
def test_rfc8785_number_formatting(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode("ascii")


def test_values_json_cannot_carry_exactly_are_rejected() -> None:
    for bad in (math.nan, math.inf, 2**53, {1: "non-string key"}, b"bytes"):
        with pytest.raises(ValueError):
            canonical_json(bad)


class Sample(BaseModel):
    zeta: int
    alpha: str
    nested: dict[str, float]


def test_pydantic_models_dump_in_json_mode() -> None:
    model = Sample(zeta=3, alpha="x", nested={"b": 2.0, "a": 0.5})
    assert canonical_json(model) == b'{"alpha":"x","nested":{"a":0.5,"b":2},"zeta":3}'
    assert canonical_json(model) == canonical_json(model.model_dump())
