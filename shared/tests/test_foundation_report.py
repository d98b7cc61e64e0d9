import json

import pytest
from effrepro.report import Claim, check_expect, validate_claims, write_claims, write_report


@pytest.mark.parametrize(
    ("measured", "expect", "holds"),
    [(1.0, ">= 1.0", True), (0.99, ">= 1.0", False), (0.5, "< 0.5", False), (5, "== 5", True),
     (1.05, "between 0.9 1.1", True), (1.2, "between 0.9 1.1", False), (float("nan"), ">= 0", False),
     (-1, "> -2", True), (3, "!= 3", False)],
)
def test_check_expect(measured, expect, holds):
    assert check_expect(measured, expect) is holds


def test_bad_expect():
    with pytest.raises(ValueError, match="cannot parse"):
        check_expect(1.0, "at least 1")


def _claim(**kw):
    base = dict(id="tau_ratio", description="d", paper=1.1, measured=1.2, unit="x", baseline="eagle2", expect=">= 1")
    base.update(kw)
    return Claim(**base)


def test_claim_holds_is_computed_and_file_round_trips(tmp_path):
    claims = [_claim(), _claim(id="b", measured=0.5, details={"seeds": [0, 1]})]
    assert [c.holds for c in claims] == [True, False]
    path = write_claims(tmp_path, claims)
    rows = json.loads(path.read_text())
    validate_claims(rows)
    assert rows[1]["holds"] is False and rows[1]["details"] == {"seeds": [0, 1]}
    report = write_report(tmp_path, "T", "| a | b |\n|---|---|\n| 1 | 2 |", claims, notes_md="n")
    text = report.read_text()
    assert "tau_ratio" in text and "torch" in text and "**no**" in text


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("unit"), "missing keys"),
        (lambda c: c.update(extra=1), "unknown keys"),
        (lambda c: c.update(measured="1"), "'measured' must be a number"),
        (lambda c: c.update(paper="x"), "'paper' must be a number or null"),
        (lambda c: c.update(holds=False), "disagrees"),
        (lambda c: c.update(expect="=> 1"), "cannot parse"),
        (lambda c: c.update(id=""), "non-empty"),
    ],
)
def test_schema_violations(mutate, message):
    row = _claim().as_dict()
    mutate(row)
    with pytest.raises(ValueError, match=message):
        validate_claims([row])


def test_duplicate_ids_and_empty():
    row = _claim().as_dict()
    with pytest.raises(ValueError, match="duplicate"):
        validate_claims([row, dict(row)])
    with pytest.raises(ValueError, match="non-empty"):
        validate_claims([])
