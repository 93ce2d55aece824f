"""Compact JSON text with exact decimals: the bytes the project writes to Kafka topics.

Money and quantities are `Decimal`; the stdlib encoder would pass them through float or
refuse them. `dumps` writes a Decimal as its exact number text (never via float) and
refuses floats outright. Notifications (pipelines/rules/notifications.py), plan.changed events
(pipelines/rules/plan_rules.py) and the development event generator all encode with it.
"""
from __future__ import annotations

from decimal import Decimal
from json.encoder import encode_basestring as _encode_string


def decimal_text(value: Decimal) -> str:
    """Plain positional notation, no exponent, no trailing zeros: the JSON number text."""
    if not value.is_finite():
        raise ValueError(f"not a finite decimal: {value}")
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def dumps(obj: object) -> str:
    """Compact JSON where Decimal becomes a bare number written exactly (never via float).

    The stdlib encoder offers no hook to emit raw number text, so the walk is done here, with
    the stdlib's own string escaper (UTF-8 kept as is, like ensure_ascii=False).
    """
    if isinstance(obj, str):
        return _encode_string(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, Decimal):
        return decimal_text(obj)
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_encode_string(str(k))}:{dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, float):
        raise TypeError("floats are not allowed in events; use Decimal")
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
