"""The *Summary and outlook* page: it runs, and what it saves agrees with the committed records."""

from __future__ import annotations

import pytest

from tlutils.results import findings


@pytest.mark.chapter
def test_summary_chapter(run_chapter):
    record = run_chapter("outlook/summary")
    m = record["metrics"]
    rows = findings()

    assert m["comparisons"] == len(rows) > 0
    assert m["resolved"] == sum(r["verdict"] != "not resolved" for r in rows)
    assert m["chapters_with_records"] == sorted({r["chapter"] for r in rows})
    assert m["missing_comparisons"] == [], "the page names comparisons that no committed record stores"

    # Every claim is either tested against a record or corrected from the literature.
    assert m["claims"] == m["claims_tested"] + m["claims_corrected_from_literature"]
    assert m["claims_measured"] == m["claims_tested"] > 0
    assert sum(m["claim_status"].values()) == m["claims_tested"]

    # Each judgement repeats the verdict the record stores, and follows from it.
    by_key = {(r["chapter"], r["profile"], r["path"]): r["verdict"] for r in rows}
    judged = [(c, j) for c in m["claim_evidence"].values() for j in c["judged"]]
    assert len(judged) == m["evidence_comparisons"] == sum(m["evidence_judgements"].values())
    for claim, j in judged:
        assert j["profile"] == claim["run"]
        assert by_key[(claim["chapter"], j["profile"], j["path"])] == j["verdict"]
        assert (j["judgement"] == "not resolved") == (j["verdict"] == "not resolved")
    for claim in m["claim_evidence"].values():
        resolved = {j["judgement"] for j in claim["judged"]} - {"not resolved"}
        expected = ("not resolved" if not resolved else "mixed" if len(resolved) == 2
                    else {"supports": "supported", "contradicts": "contradicted"}[resolved.pop()])
        assert claim["status"] == expected
        # The run a claim is judged on is the record run wherever that run stores its comparisons.
        has_record = any((claim["chapter"], "record", j["path"]) in by_key for j in claim["judged"])
        assert claim["run"] == "record" or not has_record
