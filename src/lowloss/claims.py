"""The papers' claims, checked against a study directory's measured numbers.

Every claim is {id, statement, measured, held, figures}: `held` is True/False when the stage ran and
None when it did not (the report says "not measured").
"""

from __future__ import annotations

import functools
from pathlib import Path
from statistics import mean

from .study import Settings, load_json, mode_dirs


def _claim(id_, statement, measured=None, held=None, figures=(), note=""):
    return {"id": id_, "statement": statement, "measured": measured or {}, "held": held,
            "figures": [str(f) for f in figures], "note": note}


def _safe(fn):
    """A claim whose data is missing or malformed is reported as not measured rather than crashing."""

    @functools.wraps(fn)
    def wrapped(study, s):
        try:
            return fn(study, s)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError, OSError) as e:
            c = fn.__doc__.strip().split("\n")[0] if fn.__doc__ else fn.__name__
            return [_claim(fn.__name__.removeprefix("claim_"), c, {"error": f"{type(e).__name__}: {e}"}, None)]

    return wrapped


@_safe
def claim_modes(study: Path, s: Settings):
    """Independently trained networks (different seeds) reach high test accuracy."""
    runs = [load_json(d / "run.json") for d in mode_dirs(study, s)]
    if not all(runs):
        return [_claim("modes", claim_modes.__doc__.strip())]
    acc = [r["final"]["test"]["accuracy"] for r in runs]
    return [_claim("modes", claim_modes.__doc__.strip(), {"test_accuracy": acc, "mean": mean(acc)}, min(acc) > 0.9)]


@_safe
def claim_curves(study: Path, s: Settings):
    """Mode connectivity: the line between two modes crosses a loss barrier; a trained curve does not."""
    out = []
    for kind in ("bezier", "polychain"):
        d = study / f"connect_{kind}"
        j = load_json(d / "curve.json")
        stmt_line = "The straight line between two independently trained modes crosses a high-loss barrier."
        stmt = (f"A trained {'Bezier curve' if kind == 'bezier' else 'polygonal chain'} connects the two modes "
                "with a train-loss barrier at most a tenth of the line's.")
        if j is None:
            out.append(_claim(f"curve_{kind}", stmt))
            continue
        lb, cb = j["summary"]["line"]["barrier"], j["summary"]["curve"]["barrier"]
        figs = [d / "curve.png"]
        if kind == "bezier":
            out.append(_claim("line_barrier", stmt_line,
                              {"line_barrier": lb, "line_max_train_loss": j["summary"]["line"]["max_train_loss"],
                               "line_max_test_error": j["summary"]["line"]["max_test_error"]}, lb > 0.1, figs))
        out.append(_claim(f"curve_{kind}", stmt,
                          {"curve_barrier": cb, "line_barrier": lb,
                           "curve_max_train_loss": j["summary"]["curve"]["max_train_loss"],
                           "curve_max_test_error": j["summary"]["curve"]["max_test_error"]},
                          cb <= 0.1 * lb and lb > 0, figs))
        if kind == "bezier":
            t = j["t"]
            ens = j["curve"]["ensemble_test_error"]
            ref = j.get("endpoint_ensemble", {}).get("test_error", ens[-1])
            single = j["curve"]["test_error"][0]
            # first t at which the {w_A, phi(t)} ensemble is within half-way of the {w_A,w_B} ensemble's gain
            target = ref + 0.5 * (single - ref) if single > ref else ref
            t_reach = next((tt for tt, e in zip(t, ens) if tt > 0 and e <= target + 1e-12), None)
            out.append(_claim(
                "curve_ensemble",
                "Ensembling an endpoint with a point of the curve gains most of the two-mode ensemble's "
                "improvement well before the far end (t ~ 0.3-0.4 in the paper).",
                {"t_half_gain": t_reach, "single_error": single, "two_mode_ensemble_error": ref,
                 "line_ensemble_error_mid": j["line"]["ensemble_test_error"][len(t) // 2],
                 "curve_ensemble_error_mid": ens[len(t) // 2]},
                (t_reach is not None and t_reach <= 0.6) if single > ref else None, [d / "ensemble.png"],
                note="" if single > ref else "the two-mode ensemble does not improve on the single model here"))
    return out


@_safe
def claim_planes(study: Path, s: Settings):
    """Loss-surface planes show the modes as isolated low-loss basins and the curve in a valley."""
    out = []
    d = study / "plane_modes"
    j = load_json(d / "plane.json")
    figs = sorted(d.glob("plane_*.png"))
    out.append(_claim("plane_modes", "In the plane through three modes, the modes sit in separate low-loss "
                      "regions divided by higher loss.", _plane_measure(d) if j else {},
                      _plane_held(d) if j else None, figs))
    d = study / "plane_curve"
    j = load_json(d / "plane.json")
    out.append(_claim("plane_curve", "In the plane through a Bezier curve, the curve runs through a low-loss valley "
                      "between the two modes.", _plane_measure(d) if j else {},
                      _plane_held(d, curve=True) if j else None, sorted(d.glob("plane_*.png"))))
    return out


def _plane_measure(d: Path) -> dict:
    import numpy as np

    z = np.load(d / "plane.npz")
    m = {"grid": int(z["train_loss"].shape[0]) if "train_loss" in z else None}
    j = load_json(d / "plane.json") or {}
    for k in ("seconds", "points_per_second"):
        if k in j:
            m[k] = j[k]
    if "train_loss" in z:
        m["min_train_loss"] = float(np.nanmin(z["train_loss"]))
        m["max_train_loss"] = float(np.nanmax(z["train_loss"]))
    return m


def _plane_held(d: Path, curve: bool = False) -> bool | None:
    m = _plane_measure(d)
    if "max_train_loss" not in m:
        return None
    return m["max_train_loss"] > 5 * max(m["min_train_loss"], 1e-3)


@_safe
def claim_budget(study: Path, s: Settings):
    """Fast ensembles and weight averaging at the budget of one training run."""
    d = study / "budget"
    j = load_json(d / "budget.json")
    figs = [d / "budget.png"]
    if j is None:
        return [_claim("fge_nll", "FGE's test NLL is better than a single SGD model's at the same budget."),
                _claim("ensembles_nll", "Every ensemble (deep, SSE, FGE, SWAG, MultiSWAG) has a better test NLL "
                       "than a single model at the same budget."),
                _claim("swa_accuracy", "SWA is at least as accurate as SGD at the same budget.")]
    b = "1"
    nll = {m: j[m][b]["nll"]["mean"] for m in j if b in j[m]}
    acc = {m: j[m][b]["accuracy"]["mean"] for m in j if b in j[m]}
    single = nll["single"]
    ens = [m for m in ("ensemble", "sse", "fge", "swag", "multiswag") if m in nll]
    note = ("digits networks are underconfident (mean confidence below accuracy), so averaging probabilities "
            "can raise NLL; 360 test images make NLL differences of ~0.002 noise")
    return [
        _claim("fge_nll", "FGE's test NLL is better than a single SGD model's at the same budget.",
               {"fge_nll": nll.get("fge"), "single_nll": single}, nll.get("fge", 1e9) < single, figs, note),
        _claim("ensembles_nll", "Every ensemble (deep, SSE, FGE, SWAG, MultiSWAG) has a better test NLL than a "
               "single model at the same budget.", {"nll": nll}, all(nll[m] < single for m in ens), figs, note),
        _claim("swa_accuracy", "SWA is at least as accurate as SGD at the same budget.",
               {"swa_accuracy": acc.get("swa"), "single_accuracy": acc["single"]},
               acc.get("swa", -1) >= acc["single"], figs),
    ]


@_safe
def claim_curve_swag(study: Path, s: Settings):
    """SWAG over a curve's bends: every sampled curve is itself a low-loss path."""
    d = study / "curve_swag"
    j = load_json(d / "curve_swag.json")
    c = load_json(study / "connect_bezier" / "curve.json")
    stmt = ("SWAG over a curve's bend parameters samples new curves that all stay low-loss (far below the line's "
            "maximum train loss).")
    if j is None or c is None:
        return [_claim("curve_swag", stmt)]
    m = j["metrics"]
    line_max = c["summary"]["line"]["max_train_loss"]
    return [_claim("curve_swag", stmt, {"sampled_max_train_loss_max": m["sampled_max_train_loss_max"],
                                        "trained_curve_max_train_loss": m["trained_curve_max_train_loss"],
                                        "line_max_train_loss": line_max},
                   m["sampled_max_train_loss_max"] < 0.25 * line_max, sorted(d.glob("*.png")))]


@_safe
def claim_espro(study: Path, s: Settings):
    """ESPRO: simplexes of low loss grown from single modes, and their ensembles."""
    d = study / "espro"
    j = load_json(d / "espro.json")
    st1 = "A simplex grown from one mode (ESPRO) has positive volume and its samples are as accurate as the mode."
    st2 = "An ESPRO ensemble (3 modes x 3-vertex simplexes) beats the deep ensemble of the same modes in test NLL."
    if j is None:
        return [_claim("espro_simplex", st1), _claim("espro_vs_deep", st2)]
    vols, mode_acc, sample_acc = [], [], []
    figs = []
    for sx in j["simplexes"]:
        sj = load_json(Path(sx["dir"]) / "simplex.json")
        vols.append(sj["log_volume"][-1])
        mode_acc.append(sj["test"]["mode"]["accuracy"])
        sample_acc.append(sj["test"]["sample_mean"]["accuracy"])
        figs += sorted(Path(sx["dir"]).glob("*.png"))[:1]
    import math

    gap = mean(mode_acc) - mean(sample_acc)
    return [
        _claim("espro_simplex", st1, {"log_volume": vols, "mode_accuracy": mean(mode_acc),
                                      "sample_mean_accuracy": mean(sample_acc)},
               all(math.isfinite(v) for v in vols) and gap <= 0.01, figs[:1]),
        _claim("espro_vs_deep", st2, {"espro": j["espro"], "deep_ensemble": j["deep_ensemble"]},
               j["espro"]["nll"] < j["deep_ensemble"]["nll"], [],
               "with the reference LAMBDA=1e-6 the digits simplexes stay small, so ESPRO's samples are close to "
               "the modes and the two ensembles nearly coincide"),
    ]


@_safe
def claim_complex(study: Path, s: Settings):
    """Mode-connecting simplicial complexes: every simplex joining the modes has low loss."""
    d = study / "complex"
    j = load_json(d / "complex.json")
    stmt = ("Two modes are joined by a simplicial complex (SPRO) whose sampled models all stay close to the modes' "
            "test error.")
    if j is None:
        return [_claim("complex", stmt)]
    mode_err = max(1 - m["accuracy"] for m in j["modes"])
    worst = max(max(sx["test_error"]) for sx in j["simplexes"])
    return [_claim("complex", stmt, {"mode_test_error": mode_err, "worst_sample_test_error": worst,
                                     "simplex_log_volumes": j.get("simplex_log_volumes")},
                   worst <= mode_err + 0.03, sorted(d.glob("*.png")))]


@_safe
def claim_dimension(study: Path, s: Settings):
    """The low-loss region connecting two modes is many-dimensional."""
    d = study / "dimension"
    j = load_json(d / "dimension.json")
    stmt = ("Connectors can be added between two modes one at a time while sampled models keep low train loss: the "
            "low-loss region has many dimensions (>= 10 for VGG on CIFAR-10 in the paper).")
    if j is None:
        return [_claim("dimension", stmt)]
    n = j["dimension_lower_bound"]
    return [_claim("dimension", stmt, {"connectors": j["connectors"], "log_volume": j["log_volume"],
                                       "sample_train_accuracy": j["sample_train_accuracy"],
                                       "collapsed_at": j.get("collapsed_at"), "dimension_lower_bound": n},
                   n >= 3 and min(j["sample_train_accuracy"]) >= 0.95, [d / "dimension.png"],
                   "the dimension is a lower bound: the volume did not collapse within the connectors tried"
                   if j.get("collapsed_at") is None else "")]


@_safe
def claim_calibration(study: Path, s: Settings):
    """Temperature scaling."""
    d = study / "calibration"
    j = load_json(d / "calibration.json")
    stmt = "Temperature scaling fitted on held-out data does not change accuracy and lowers held-out ECE or NLL."
    if j is None:
        return [_claim("calibration", stmt)]
    rows = {k: {"T": v["temperature"], "nll_before": v["before"]["nll"], "nll_after": v["after"]["nll"],
                "ece_before": v["before"]["ece"], "ece_after": v["after"]["ece"]} for k, v in j["results"].items()}
    same_acc = all(v["before"]["accuracy"] == v["after"]["accuracy"] for v in j["results"].values())
    better = sum(1 for r in rows.values() if r["nll_after"] <= r["nll_before"] or r["ece_after"] <= r["ece_before"])
    return [_claim("calibration", stmt, rows, same_acc and better >= len(rows) / 2, [d / "reliability.png"],
                   "T is fitted on a fixed half of the test split and scored on the other half (180 images each): "
                   "when the fitting half has no error T is not identifiable and 1 is kept")]


@_safe
def claim_shift(study: Path, s: Settings):
    """Dataset shift."""
    d = study / "shift"
    j = load_json(d / "shift.json")
    stmt = ("Under gaussian-noise corruption, ensembles (deep, ESPRO, MultiSWAG) keep a lower NLL than a single "
            "model at every severity.")
    if j is None:
        return [_claim("shift", stmt)]
    sev = sorted(j["single"]["gaussian_noise"], key=int)
    methods = [m for m in ("ensemble", "espro", "multiswag") if m in j]
    nll = {m: [j[m]["gaussian_noise"][k]["nll"] for k in sev] for m in ["single", *methods]}
    held = all(all(a < b for a, b in zip(nll[m], nll["single"])) for m in methods)
    return [_claim("shift", stmt, {"severities": [int(k) for k in sev], "nll": nll}, held,
                   [d / "shift.png", d / "corruptions.png"])]


@_safe
def claim_vardrop(study: Path, s: Settings):
    """Variance networks."""
    d = study / "vardrop"
    j = load_json(d / "schemes.json")
    st1 = "A variance network (zero-mean weights) predicts at chance with the deterministic (mean-weight) scheme."
    st2 = "With the ensemble scheme, the variance network is within 2 points of Gaussian dropout's accuracy."
    if j is None or "variance" not in j:
        return [_claim("variance_deterministic", st1), _claim("variance_ensemble", st2)]
    v, dr = j["variance"], j.get("dropout")
    figs = [d / "log_alpha.png"]
    meas = {p: {k: j[p][k]["accuracy"] for k in ("stochastic", "deterministic", "ensemble")} for p in j
            if isinstance(j[p], dict) and "ensemble" in j[p]}
    out = [_claim("variance_deterministic", st1, meas, v["deterministic"]["accuracy"] <= 0.2, figs)]
    out.append(_claim("variance_ensemble", st2, meas,
                      (dr["ensemble"]["accuracy"] - v["ensemble"]["accuracy"] <= 0.02) if dr else None, figs,
                      "the slides train 200 epochs on full MNIST; with more variance layers than the default one "
                      "(--variance-layers) a variance network needs far more steps than this study spends"))
    return out


@_safe
def claim_regression(study: Path, s: Settings):
    """1-D regression bands."""
    d = study / "regression"
    j = load_json(d / "regression.json")
    stmt = "Predictive uncertainty (the +-2 std band) is wider away from the training data than near it."
    if j is None:
        return [_claim("regression", stmt)]
    res = j["results"]
    meas = {m: {"test_ll": r["test_ll"], **{f"std_{k}": v for k, v in r.get("mean_epistemic_std", {}).items()}}
            for m, r in res.items()}
    held = all(r["mean_epistemic_std"]["away_from_data"] > 2 * r["mean_epistemic_std"]["near_data"]
               for m, r in res.items() if m in ("ensemble", "espro") and "mean_epistemic_std" in r)
    return [_claim("regression", stmt, meas, held, [d / "regression.png"])]


@_safe
def claim_spirals(study: Path, s: Settings):
    """Two spirals."""
    d = study / "spirals"
    j = load_json(d / "spirals.json")
    stmt = "Models sampled from one simplex all fit the two-spirals training data, with different decision functions."
    if j is None:
        return [_claim("spirals", stmt)]
    tr = [x["train_accuracy"] for x in j["samples"]]
    return [_claim("spirals", stmt, {"min_sample_train_accuracy": min(tr), "grid_disagreement": j["grid_disagreement"],
                                     "ensemble_test_accuracy": j["ensemble"]["test_accuracy"]},
                   min(tr) >= 0.95 and j["grid_disagreement"] > 0.01, [d / "spirals.png"])]


CLAIMS = [claim_modes, claim_curves, claim_planes, claim_budget, claim_curve_swag, claim_espro, claim_complex,
          claim_dimension, claim_calibration, claim_shift, claim_vardrop, claim_regression, claim_spirals]


def collect_claims(study: Path, s: Settings) -> list[dict]:
    out = []
    for fn in CLAIMS:
        out.extend(fn(study, s))
    return out
