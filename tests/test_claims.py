"""Claims are records whose `held` is their own test evaluated over their own data."""

import json

from lowloss.claims import CLAIMS, claim, claim_curves, collect_claims


def test_held_is_the_test_over_measured_and_threshold():
    c = claim("x", "s", {"a": 0.05, "b": 1.0}, "a <= fraction * b", {"fraction": 0.1})
    assert c.held is True and c.threshold == {"fraction": 0.1} and c.test == "a <= fraction * b"
    assert claim("x", "s", {"a": 0.2, "b": 1.0}, "a <= fraction * b", {"fraction": 0.1}).held is False
    assert claim("x", "s").held is None  # not measured
    assert claim("x", "s", {"a": 1}, "None").held is None  # a test that cannot decide


def test_unrun_study_reports_every_claim_as_not_measured(tmp_path):
    claims = collect_claims(tmp_path, [tmp_path / "modes" / f"seed{k}" for k in range(3)])
    assert len(claims) == 21 and all(c["held"] is None for c in claims)
    assert [i for fn in CLAIMS for i, _ in fn.claims] == [c["id"] for c in claims]


def test_curve_claims_from_a_run_json(tmp_path):
    d = tmp_path / "connect_bezier"
    d.mkdir()
    t = [0.0, 0.5, 1.0]
    path = {"test_error": [0.1, 0.1, 0.1], "ensemble_test_error": [0.1, 0.07, 0.05]}
    (d / "run.json").write_text(json.dumps({
        "t": t, "curve": path, "line": {**path, "ensemble_test_error": [0.1, 0.3, 0.05]},
        "endpoint_ensemble": {"test_error": 0.05},
        "summary": {"line": {"barrier": 2.0, "max_train_loss": 2.1, "max_test_error": 0.9},
                    "curve": {"barrier": 0.1, "max_train_loss": 0.2, "max_test_error": 0.12}}}))
    by_id = {c.id: c for c in claim_curves(tmp_path, [])}
    assert by_id["line_barrier"].held is True
    assert by_id["curve_bezier"].held is True  # 0.1 <= 0.1 * 2.0
    assert by_id["curve_ensemble"].measured["t_half_gain"] == 0.5 and by_id["curve_ensemble"].held is True
    assert by_id["curve_polychain"].held is None
    # every recorded comparison can be redone from the record alone
    for c in by_id.values():
        if c.test and c.measured:
            assert eval(c.test, {"__builtins__": {"all": all, "min": min, "max": max}, **c.measured,
                                 **c.threshold}) == c.held
