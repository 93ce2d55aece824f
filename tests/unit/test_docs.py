from devtools.docs import README, render_readme


def test_readme_contract_and_table_reference_match_the_schemas():
    text = README.read_text(encoding="utf-8")
    assert render_readme(text) == text, "README is stale: run `make docs`"


def test_readme_lists_every_quarantine_reason_and_table():
    text = README.read_text(encoding="utf-8")
    for needle in ("`occurred_at_in_future`", "`invalid_utf8`", "#### `silver.quarantine`", "#### `gold.daily_usage`"):
        assert needle in text
