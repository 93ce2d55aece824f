"""The event contract read from schemas/events/v1.json, and the loader's errors (no Spark)."""
from __future__ import annotations

import copy
import json
import re

import pytest

from pipelines.core import contract as C
from pipelines.core.contract import ContractError, load_contract, parse_contract
from pipelines.core.settings import REPO_ROOT

EVENT_TYPES = ("usage", "account.created", "subscription.started", "plan.changed", "subscription.cancelled",
               "purchase.completed")


def raises(message: str):
    return pytest.raises(ContractError, match=f"^{re.escape(message)}$")


def minimal_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "event_id": {"type": "string", "minLength": 1},
            "event_type": {"type": "string", "enum": ["usage", "plan.changed"]},
            "plan_id": {"type": "string"},
            "quantity": {"type": "number", "minimum": 0, "x-decimal-scale": 6},
        },
        "required": ["event_id", "event_type"],
        "allOf": [
            {"if": {"properties": {"event_type": {"const": "plan.changed"}}}, "then": {"required": ["plan_id"]}},
            {"if": {"properties": {"event_type": {"const": "usage"}}}, "then": {"required": ["quantity"]}},
        ],
    }


# --- version 1 ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v1():
    return load_contract(1)


def test_v1_fields_in_order(v1):
    assert v1.version == 1
    assert v1.title == "Billing event, schema_version 1"
    assert [f.name for f in v1.fields] == [
        "event_id", "event_type", "account_id", "occurred_at", "schema_version", "source", "product", "metric",
        "quantity", "dedup_key", "plan_id", "amount", "properties",
    ]
    assert v1.event_types == EVENT_TYPES
    assert [f.name for f in v1.required] == ["event_id", "event_type", "account_id", "occurred_at", "schema_version"]


def test_v1_required_for(v1):
    required_for = {f.name: f.required_for for f in v1.fields if f.required_for}
    assert required_for == {
        "product": frozenset({"usage"}),
        "metric": frozenset({"usage"}),
        "quantity": frozenset({"usage"}),
        "plan_id": frozenset({"subscription.started", "plan.changed"}),
        "amount": frozenset({"purchase.completed"}),
    }
    assert not any(f.required for f in v1.fields if f.required_for)


def test_v1_field_details(v1):
    event_id = v1.field("event_id")
    assert (event_id.json_type, event_id.min_length, event_id.max_length, event_id.required) == ("string", 1, 128, True)
    account_id = v1.field("account_id")
    assert (account_id.min_length, account_id.max_length) == (1, 64)
    assert v1.field("occurred_at").fmt == "date-time"
    version = v1.field("schema_version")
    assert (version.json_type, version.const) == ("integer", 1)
    quantity = v1.field("quantity")
    assert (quantity.json_type, quantity.minimum, quantity.decimal_scale, quantity.spark_type) == (
        "number", 0, 6, "decimal(38,6)")
    assert v1.field("product").enum == ("helpdesk", "automate", "voice", "sms", "convert")
    assert v1.field("event_type").enum == EVENT_TYPES
    assert (v1.field("dedup_key").required, v1.field("dedup_key").min_length) == (False, 1)
    assert v1.field("properties").json_type == "object"
    assert v1.field("properties").children == ()
    assert v1.field("event_id").column == "event_id"


ACCOUNT_IDS = [("acct_001", True), ("a", True), ("A1.b:c-d_e", True), ("a" * 64, True), ("0", True),
               ("a" * 65, False), ("acct;=1+1", False), ("acct,1", False), ("=cmd()", False), ("+1", False),
               ("-1", False), ("@x", False), (" =1", False), ("\t=1", False), ("acct 1", False), ("'x", False),
               ('"x', False), ("_a", False), ("acct\n", False), ("acct\r", False), ("acct\u2028", False),
               ("caf\u00e9", False), ("", False)]


@pytest.mark.parametrize("account_id, good", ACCOUNT_IDS)
def test_v1_account_id_pattern(v1, account_id, good):
    """No spaces, quotes, list separators or formula characters; the pattern ends at the end
    of the text in every engine that reads it (Python re and Java's rlike let `$` match before
    a final newline, hence the lookahead)."""
    pattern = v1.field("account_id").pattern
    assert pattern == r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}(?![\s\S])"
    assert bool(re.search(pattern, account_id)) is good


def test_v1_amount_children(v1):
    amount = v1.field("amount")
    assert amount.json_type == "object"
    value, currency = amount.children
    assert (value.name, value.json_type, value.required, value.spark_type) == ("value", "string", True, "decimal(38,6)")
    assert value.pattern == r"^-?[0-9]+(\.[0-9]+)?$"
    assert (currency.name, currency.required, currency.pattern) == ("currency", True, "^[A-Z]{3}$")
    # children are required inside their parent, never for an event type
    assert value.required_for == currency.required_for == frozenset()


def test_unknown_field_lookup(v1):
    with pytest.raises(KeyError):
        v1.field("amount_value")


def test_load_contract_is_cached():
    assert load_contract(1) is load_contract(1)


def test_v1_file_is_what_parse_contract_reads(v1):
    assert v1 == parse_contract(json.loads((C.schemas_dir() / "events" / "v1.json").read_text("utf-8")), 1)


# --- parse_contract ------------------------------------------------------------------------------

def test_minimal_schema_parses():
    contract = parse_contract(minimal_schema(), 7)
    assert contract.version == 7
    assert contract.title == ""
    assert contract.event_types == ("usage", "plan.changed")
    assert contract.field("plan_id").required_for == frozenset({"plan.changed"})
    assert contract.field("quantity").required_for == frozenset({"usage"})
    assert [f.name for f in contract.required] == ["event_id", "event_type"]


@pytest.mark.parametrize("schema", [{"type": "array", "properties": {}}, {"type": "object"}, {}],
                         ids=["array", "no-properties", "empty"])
def test_schema_must_be_an_object_with_properties(schema):
    with raises("the event schema must describe a JSON object with properties"):
        parse_contract(schema, 1)


def test_unsupported_keyword():
    schema = minimal_schema()
    schema["properties"]["quantity"]["maximum"] = 10
    schema["properties"]["quantity"]["multipleOf"] = 1
    with raises("field 'quantity': unsupported schema keywords ['maximum', 'multipleOf']"):
        parse_contract(schema, 1)


def test_unsupported_keyword_in_a_child():
    schema = minimal_schema()
    schema["properties"]["amount"] = {"type": "object", "properties": {"value": {"type": "string", "oneOf": []}}}
    with raises("field 'value': unsupported schema keywords ['oneOf']"):
        parse_contract(schema, 1)


# A list of types (["string", "null"]) is valid JSON Schema but not in the supported subset.
@pytest.mark.parametrize("json_type", ["array", "null", None, ["string", "null"], ["string"], 1], ids=str)
def test_unknown_type(json_type):
    schema = minimal_schema()
    if json_type is None:
        del schema["properties"]["plan_id"]["type"]
    else:
        schema["properties"]["plan_id"]["type"] = json_type
    with raises(f"field 'plan_id': type must be one of ['boolean', 'integer', 'number', 'object', 'string'], "
                f"got {json_type!r}"):
        parse_contract(schema, 1)


@pytest.mark.parametrize("body", ["string", ["string"], None, True], ids=str)
def test_field_body_must_be_a_schema_object(body):
    schema = minimal_schema()
    schema["properties"]["plan_id"] = body
    with raises(f"field 'plan_id': expected a schema object, got {body!r}"):
        parse_contract(schema, 1)


def test_child_body_must_be_a_schema_object():
    schema = minimal_schema()
    schema["properties"]["amount"] = {"type": "object", "properties": {"value": "string"}}
    with raises("field 'value': expected a schema object, got 'string'"):
        parse_contract(schema, 1)


def test_all_of_naming_an_unknown_event_type():
    schema = minimal_schema()
    schema["allOf"].append({"if": {"properties": {"event_type": {"const": "refund.issued"}}},
                            "then": {"required": ["plan_id"]}})
    with raises("allOf names event types not in the enum: ['refund.issued']"):
        parse_contract(schema, 1)


@pytest.mark.parametrize("rule", [
    {"if": {"properties": {"event_type": {"enum": ["usage"]}}}, "then": {"required": ["quantity"]}},
    {"if": {"properties": {"event_type": {"const": "usage"}}}},
    "usage requires quantity",
], ids=["enum-instead-of-const", "no-then", "not-a-mapping"])
def test_all_of_must_be_if_const_then_required(rule):
    schema = minimal_schema()
    schema["allOf"] = [rule]
    with raises(f"allOf entries must be if event_type const / then required: {rule}"):
        parse_contract(schema, 1)


def test_required_field_not_declared():
    schema = minimal_schema()
    schema["required"].append("account_id")
    schema["allOf"][0]["then"]["required"].append("currency")
    with raises("required fields not declared in properties: ['account_id', 'currency']"):
        parse_contract(schema, 1)


@pytest.mark.parametrize("change", ["no-enum", "no-event-type"])
def test_event_type_needs_an_enum(change):
    schema = minimal_schema()
    schema["allOf"] = []
    schema["required"] = ["event_id"]
    if change == "no-enum":
        del schema["properties"]["event_type"]["enum"]
    else:
        del schema["properties"]["event_type"]
    with raises("event_type must list its allowed values in enum"):
        parse_contract(schema, 1)


def test_parse_contract_does_not_modify_its_input():
    schema = minimal_schema()
    before = copy.deepcopy(schema)
    parse_contract(schema, 1)
    assert schema == before


# --- load_contract ---------------------------------------------------------------------------------

def test_missing_version_file():
    path = C.schemas_dir() / "events" / "v99.json"
    with raises(f"no schema for events version 99 at {path}"):
        load_contract(99)


def test_invalid_json_file(tmp_path, monkeypatch):
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "v41.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setattr(C, "schemas_dir", lambda: tmp_path)
    with pytest.raises(ContractError, match=rf"^{re.escape(str(tmp_path / 'events' / 'v41.json'))}: not valid JSON: "):
        load_contract.__wrapped__(41)


def test_load_contract_reads_the_versioned_file(tmp_path, monkeypatch):
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "v42.json").write_text(json.dumps(minimal_schema()), encoding="utf-8")
    monkeypatch.setattr(C, "schemas_dir", lambda: tmp_path)
    contract = load_contract.__wrapped__(42)  # bypass the cache: do not leak v42 into other tests
    assert (contract.version, contract.event_types) == (42, ("usage", "plan.changed"))


def test_the_package_schemas_are_the_checkout_schemas():
    """One copy: the repository's schemas/ is the package's conf/schemas, not a second tree."""
    assert (REPO_ROOT / "schemas").is_symlink()
    assert not C.schemas_dir().is_symlink()
    assert C.schemas_dir().resolve() == (REPO_ROOT / "schemas").resolve()
