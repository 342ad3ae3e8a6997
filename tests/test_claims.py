"""Claims are records whose `held` is their own test evaluated over their own data."""

import json

from lowloss.claims import (
    CLAIMS,
    HELD,
    NOT_HELD,
    WITHIN_NOISE,
    claim,
    claim_budget,
    claim_calibration,
    claim_curve_ensemble,
    claim_curves,
    claim_shift,
    collect_claims,
    judge,
    judge_all,
    spread,
    verdict,
)


def test_held_is_the_test_over_measured_and_threshold():
    c = claim("x", "s", {"a": 0.05, "b": 1.0}, "a <= fraction * b", {"fraction": 0.1})
    assert c.held == HELD and c.threshold == {"fraction": 0.1} and c.test == "a <= fraction * b"
    assert claim("x", "s", {"a": 0.2, "b": 1.0}, "a <= fraction * b", {"fraction": 0.1}).held == NOT_HELD
    assert claim("x", "s").held is None  # not measured
    assert claim("x", "s", {"a": 1}, "None").held is None  # a test that cannot decide


def test_unrun_study_reports_every_claim_as_not_measured(tmp_path):
    claims = collect_claims(tmp_path, [tmp_path / "modes" / f"seed{k}" for k in range(3)])
    assert len(claims) >= 25 and all(c["held"] is None for c in claims)
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
    # the endpoint-ensemble claim reads the MNIST-1D curves (connect1d): the same record there
    (tmp_path / "connect1d").mkdir()
    (tmp_path / "connect1d" / "run.json").write_text((d / "run.json").read_text())
    by_id = {c.id: c for c in claim_curves(tmp_path, []) + claim_curve_ensemble(tmp_path, [])}
    assert by_id["line_barrier"].held == HELD
    assert by_id["curve_bezier"].held == HELD  # 0.1 <= 0.1 * 2.0
    assert by_id["curve_ensemble"].measured["t_half_gain"] == [0.5] and by_id["curve_ensemble"].held == HELD
    assert by_id["curve_polychain"].held is None
    assert by_id["curve_bezier"].spread["n"] == 1 and "measured once" in by_id["curve_bezier"].note
    # every recorded comparison can be redone from the record alone
    for c in by_id.values():
        if c.test and c.measured:
            value = eval(c.test, {"__builtins__": {"judge": judge, "judge_all": judge_all}, **c.measured,
                                  **c.threshold})
            assert {True: HELD, False: NOT_HELD}.get(value, value) == c.held


def test_curve_ensemble_without_an_ensemble_gain_is_not_held(tmp_path):
    """Two modes whose ensemble is no better than A alone leave the curve nothing to reach: a verdict, not a gap."""
    path = {"test_error": [0.05, 0.06, 0.05], "ensemble_test_error": [0.05, 0.05, 0.05]}
    _write(tmp_path / "connect1d", {"t": [0.0, 0.5, 1.0], "curve": path, "line": path,
                                    "endpoint_ensemble": {"test_error": 0.05}})
    [c] = claim_curve_ensemble(tmp_path, [])
    assert c.held == NOT_HELD and c.measured["t_half_gain"] == [None] and c.measured["gain"] == [0.0]
    assert abs(c.spread["margin"] - (0.6 - 1.0)) < 1e-12 and "no gain to reach" in c.note


def test_replicated_curve_claims_judge_the_spread_over_pairs(tmp_path):
    """Three pairs of modes (the stage directory and two rep_* replicates): the verdict is the paired spread's."""
    def curve(line_barrier, curve_barrier):
        t = [0.0, 0.5, 1.0]
        path = {"test_error": [0.1, 0.1, 0.1], "ensemble_test_error": [0.1, 0.07, 0.05]}
        return {"t": t, "curve": path, "line": path, "endpoint_ensemble": {"test_error": 0.05},
                "summary": {"line": {"barrier": line_barrier, "max_train_loss": 2.1, "max_test_error": 0.9},
                            "curve": {"barrier": curve_barrier, "max_train_loss": 0.2, "max_test_error": 0.12}}}

    d = tmp_path / "connect_bezier"
    _write(d, curve(2.0, 0.01))
    _write(d / "rep_pair12", curve(2.2, 0.02))
    _write(d / "rep_pair02", curve(1.8, 0.015))
    by_id = {c.id: c for c in claim_curves(tmp_path, [])}
    assert by_id["curve_bezier"].held == HELD and by_id["curve_bezier"].spread["n"] == 3
    assert by_id["line_barrier"].measured["line_barrier"] == [2.0, 1.8, 2.2]  # stage dir, then rep_* sorted
    # one pair whose curve is no better than a tenth of its line: right sign on average, not beyond noise
    _write(d / "rep_pair02", curve(1.8, 0.5))
    c = {c.id: c for c in claim_curves(tmp_path, [])}["curve_bezier"]
    assert c.held == WITHIN_NOISE and c.spread["n"] == 3
    assert judge(0.1, None, 1) == HELD and judge(-0.1, None, 1) == NOT_HELD and judge(0.0, None, 1, strict=False) == HELD


def test_verdicts_from_paired_differences():
    assert verdict(0.3, 0.1) == HELD  # 0.3 > 2 * 0.1
    assert verdict(0.15, 0.1) == WITHIN_NOISE  # right sign, within two standard errors
    assert verdict(-0.01, 0.1) == NOT_HELD and verdict(0.0, 0.1) == NOT_HELD
    assert verdict(0.0, 0.1, strict=False) == WITHIN_NOISE  # 'at least as good'
    assert verdict(0.5, None) == WITHIN_NOISE  # one seed: no spread, never beyond noise
    assert verdict(None, None) is None
    sp = spread([1.0, 2.0, 3.0], "a - b")
    assert sp["margin"] == 2.0 and abs(sp["se"] - 1 / 3 ** 0.5) < 1e-12 and sp["n"] == 3
    assert spread([1.0])["se"] is None
    c = claim("x", "s", {"comparisons": {"a": spread([1.0, 1.1, 0.9]), "b": spread([0.1, -0.3, 0.5])}},
              "worst(*[verdict(c['margin'], c['se'], k) for c in comparisons.values()])", {"k": 2})
    assert c.held == WITHIN_NOISE and c.spread["a"]["n"] == 3 and abs(c.spread["b"]["margin"] - 0.1) < 1e-12


def _write(d, obj):
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.json").write_text(json.dumps(obj))


def test_budget_claims_are_paired_over_seeds(tmp_path):
    def m(acc, nll):
        return {"accuracy": acc, "nll": nll}

    raw = {"single": {"1": {"0": m(0.90, 0.40), "1": m(0.91, 0.38), "2": m(0.92, 0.36)}},
           "fge": {"1": {"0": m(0.91, 0.30), "1": m(0.92, 0.29), "2": m(0.92, 0.31)}},  # clearly better
           "ensemble": {"1": {"0": m(0.91, 0.39), "1": m(0.91, 0.39), "2": m(0.93, 0.35)}},  # within noise
           "swa": {"1": {"0": m(0.89, 0.40), "1": m(0.90, 0.38), "2": m(0.91, 0.36)}}}  # worse
    _write(tmp_path / "budget", {"per_seed": raw, "summary": {}, "config": {"data": "mnist1d"}})
    by_id = {c.id: c for c in claim_budget(tmp_path, [])}
    assert by_id["fge_nll"].held == HELD and by_id["fge_nll"].measured["n"] == 3
    assert by_id["ensembles_nll"].held == WITHIN_NOISE
    assert by_id["swa_accuracy"].held == NOT_HELD
    assert set(by_id["ensembles_nll"].spread) == {"ensemble", "fge"}


def test_calibration_claim_needs_a_fitted_temperature_everywhere(tmp_path):
    def row(t, before, after, note=""):
        return {"temperature": t, "note": note, "before": {"nll": before, "ece": 0.05, "accuracy": 0.9},
                "after": {"nll": after, "ece": 0.02, "accuracy": 0.9}}

    res = {"s0": row(0.8, 0.30, 0.25), "s1": row(0.8, 0.32, 0.26), "s2": row(0.8, 0.31, 0.25)}
    _write(tmp_path / "calibration", {"results": res, "data": {"name": "mnist1d"}})
    assert claim_calibration(tmp_path, [])[0].held == HELD
    res["s2"] = row(1.0, 0.31, 0.31, "every calibration example is classified correctly")
    _write(tmp_path / "calibration", {"results": res, "data": {"name": "mnist1d"}})
    assert claim_calibration(tmp_path, [])[0].held == NOT_HELD


def test_shift_claim_uses_every_member_as_a_single_model(tmp_path):
    def r(acc, nll):
        return {"accuracy": acc, "nll": nll}

    sevs = ["1", "2", "3", "4", "5"]
    ens = {"noise": {s: r(0.9 - 0.1 * int(s), 0.5 * int(s)) for s in sevs}}
    members = {"clean": [r(0.95, 0.2), r(0.96, 0.2), r(0.95, 0.2)],
               "noise": {s: [r(0.88 - 0.1 * int(s), 0.7 * int(s) + e) for e in (0.0, 0.05, -0.05)] for s in sevs}}
    _write(tmp_path / "shift", {"ensemble": ens, "members": members,
                                "info": {"corruptions": ["noise"], "severities": [1, 2, 3, 4, 5],
                                         "data": {"name": "mnist1d"}}})
    c = claim_shift(tmp_path, [])[0]
    assert c.held == HELD and set(c.spread) == {"nll_severity_4", "nll_severity_5", "accuracy_fall"}
    assert abs(c.measured["comparisons"]["accuracy_fall"]["margin"] - (0.9533333 - 0.38)) < 1e-6


def test_report_shows_verdicts_spread_and_what_did_not_reproduce(tmp_path):
    from lowloss.report import write_report

    held = claim("a", "A holds", spread([0.3, 0.31, 0.29]), "verdict(margin, se, k)", {"k": 2}).as_dict()
    noisy = claim("b", "B is noise", spread([0.3, -0.1, 0.1]), "verdict(margin, se, k)", {"k": 2},
                  note="too few seeds").as_dict()
    write_report(tmp_path / "r.html", title="t", subtitle="s", claims=[held, noisy], base=tmp_path,
                 stage_data={"shift": "MNIST-1D, because"})
    html = (tmp_path / "r.html").read_text()
    assert "within noise" in html and "What did not reproduce here, and why" in html and "too few seeds" in html
    tail = html[html.index("not-reproduced"):]
    assert "B is noise" in tail and "A holds" not in tail
    assert "(n=3)" in html and "MNIST-1D, because" in html


def test_plane_ridges_interpolate_log_loss_between_the_modes(tmp_path):
    """A plane whose log train loss is 1 - |y - 1| (a ridge along y = 1, exact under bilinear interpolation on
    the grid's lines): the segment between (0, 0) and (0, 2) crosses the ridge's top, exp(1)."""
    import numpy as np

    from lowloss.claims import plane_ridges

    d = tmp_path / "plane_modes"
    d.mkdir()
    x = y = np.linspace(-1.0, 3.0, 9)
    logz = 1 - np.abs(y[:, None] - 1) + 0 * x[None, :]
    coords = np.array([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    np.savez(d / "plane.npz", x=x, y=y, train_loss=np.exp(logz), point_coords=coords,
             point_labels=np.array(["a", "b", "c"]))
    (d / "run.json").write_text(json.dumps({"points": {k: {"train_loss": v} for k, v in
                                                       zip("abc", (0.01, 0.02, 0.03))}}))
    r = plane_ridges(d)
    assert abs(r["a-b"]["ridge_train_loss"] - np.e) < 1e-9 and r["a-b"]["modes_train_loss"] == 0.02
    assert abs(r["a-c"]["ridge_train_loss"] - 1.0) < 1e-9  # along y = 0: log loss 0 everywhere
    assert set(r) == {"a-b", "a-c", "b-c"}


def test_espro_pairs_pool_two_simplexes_against_two_modes():
    import math

    import torch

    from lowloss.methods.espro import pair_metrics

    y = torch.tensor([0, 1])
    one = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    half = torch.full((2, 2), 0.5)
    # simplex samples [members, n, classes]: simplex 0 is sure and right, simplex 1 undecided
    probs = [one[None].repeat(3, 1, 1), half[None].repeat(3, 1, 1), half[None]]
    modes = [half, one, half]
    p = pair_metrics(probs, modes, y)
    assert set(p) == {"0-1", "0-2", "1-2"}
    expected = -math.log(0.75)  # both pools put 3/4 on the right class
    assert abs(p["0-1"]["espro"]["nll"] - expected) < 1e-9 and abs(p["0-1"]["deep_ensemble"]["nll"] - expected) < 1e-9
    assert abs(p["1-2"]["espro"]["nll"] - math.log(2)) < 1e-9
