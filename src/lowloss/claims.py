"""The papers' claims, checked against a study directory's measured numbers.

Every claim is {id, statement, measured, held, figures}: `held` is True/False when the stage ran and
None when it did not (the report says "not measured").
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from .study import Settings, load_json, mode_dirs


def _claim(id_, statement, measured=None, held=None, figures=(), note=""):
    return {"id": id_, "statement": statement, "measured": measured or {}, "held": held,
            "figures": [str(f) for f in figures], "note": note}


def _safe(fn):
    """A claim whose data is missing or malformed is reported as not measured rather than crashing."""

    def wrapped(study, s):
        try:
            return fn(study, s)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as e:
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


CLAIMS = [claim_modes, claim_curves, claim_planes]


def collect_claims(study: Path, s: Settings) -> list[dict]:
    out = []
    for fn in CLAIMS:
        out.extend(fn(study, s))
    return out
