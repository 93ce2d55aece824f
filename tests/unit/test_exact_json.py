"""pipelines/core/exact_json.py: Decimal written as exact JSON number text, floats refused."""
from __future__ import annotations

from decimal import Decimal

import pytest

from pipelines.core.exact_json import decimal_text, dumps


def test_dumps_writes_decimals_as_plain_numbers() -> None:
    text = dumps({"q": Decimal("3.250000"), "big": Decimal("1E+3"), "tiny": Decimal("0.000001"), "s": "é"})
    assert text == '{"q":3.25,"big":1000,"tiny":0.000001,"s":"é"}'
    with pytest.raises(TypeError):
        dumps({"q": 0.1})


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("0.000"), "0"), (Decimal("-0"), "0"), (Decimal("12.50"), "12.5"), (Decimal("1E+2"), "100"),
])
def test_decimal_text_is_plain_positional(value, text) -> None:
    assert decimal_text(value) == text


def test_decimal_text_refuses_non_finite() -> None:
    with pytest.raises(ValueError, match="not a finite decimal"):
        decimal_text(Decimal("NaN"))
