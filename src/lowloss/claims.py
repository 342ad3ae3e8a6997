"""The papers' claims, checked against a study directory's measured numbers.

Each claim is a record: ``id``, ``statement``, ``measured`` (the numbers read from the stages' run.json
files), ``threshold`` (the constants of the test), ``test`` (a Python expression over the names in
``measured`` and ``threshold``), ``held`` (the verdict; None when the stage did not run), figures
and a note. ``held`` is computed from the record's own data only, so a reader of summary.json can redo
every comparison.

Verdicts: a claim that compares two things is measured over seeds as paired differences (:func:`spread`:
the differences, their mean ``margin`` and its standard error ``se``) and is ``"held"`` when the margin
exceeds ``k`` (2) standard errors, ``"within noise"`` when the sign is right but the margin is not beyond
``k`` SE (or there is only one seed, so no spread), and ``"not held"`` otherwise (:func:`verdict`). A
claim measured once, without a seed spread (a curve between one pair of modes, ...), has a yes/no test:
``"held"`` or ``"not held"``, and its record says ``seeds: 1``. :data:`CLAIMS` is the table: one measuring function per stage, each returning records;
a function takes the study directory and the directories of its independent modes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean

from .errors import LowlossError
from .utils import load_npz, read_json_file

RESULT = "run.json"
HELD, WITHIN_NOISE, NOT_HELD = "held", "within noise", "not held"
VERDICTS = (HELD, WITHIN_NOISE, NOT_HELD)
K_SE = 2  # a margin must exceed K_SE standard errors of its paired difference to be "held"


def spread(diffs, what: str = "") -> dict:
    """Paired differences over seeds (each oriented so that > 0 means the claim's direction): the values, their
    count, mean (``margin``), sample standard deviation and the standard error of the mean (None for one seed)."""
    d = [float(x) for x in diffs]
    n = len(d)
    m = sum(d) / n if n else None
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1)) if n > 1 else None
    out = {"margin": m, "se": sd / math.sqrt(n) if sd is not None else None, "sd": sd, "n": n, "diffs": d}
    return {"difference": what, **out} if what else out


def verdict(margin, se, k=K_SE, strict=True) -> str | None:
    """'held' when margin > k * se, 'within noise' when the sign is right (margin > 0; >= 0 when not strict)
    but not beyond k SE (or se is None: one seed), 'not held' otherwise; None when there is no margin."""
    if margin is None:
        return None
    if margin < 0 or (strict and margin == 0):
        return NOT_HELD
    if se is not None and margin > k * se:
        return HELD
    return WITHIN_NOISE


def judge(margin, se, n, k=K_SE, strict=True) -> str | None:
    """The verdict of one comparison: :func:`verdict` over seeds when there are several (n > 1); measured once
    (n = 1, no spread), the sign alone: 'held' when the margin is positive (>= 0 when not strict), else
    'not held' (the record then says it was measured once)."""
    if margin is None:
        return None
    if n is not None and n > 1:
        return verdict(margin, se, k, strict)
    return HELD if (margin > 0 or (not strict and margin == 0)) else NOT_HELD


def judge_all(comparisons: dict, k=K_SE) -> str | None:
    """The weakest :func:`judge` verdict over a claim's comparisons (each a :func:`spread` record, with
    ``strict`` False where equality satisfies the claim)."""
    return worst(*[judge(c["margin"], c["se"], c["n"], k, c.get("strict", True)) for c in comparisons.values()])


def worst(*verdicts) -> str | None:
    """The weakest of several verdicts (None when any is None)."""
    if any(v is None for v in verdicts):
        return None
    return min(verdicts, key=VERDICTS[::-1].index) if verdicts else None


def _verdict_of(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in VERDICTS:
            raise ValueError(f"a claim's test gave {value!r}, not one of {VERDICTS}")
        return value
    return HELD if bool(value) else NOT_HELD


_SAFE = {"all": all, "any": any, "min": min, "max": max, "abs": abs, "len": len, "sum": sum, "zip": zip,
         "sorted": sorted, "isfinite": math.isfinite, "verdict": verdict, "worst": worst, "judge": judge,
         "judge_all": judge_all}


@dataclass
class Claim:
    id: str
    statement: str
    measured: dict = field(default_factory=dict)
    threshold: dict = field(default_factory=dict)
    test: str = ""
    held: str | None = None  # "held", "within noise", "not held" (VERDICTS) or None (not measured)
    figures: list = field(default_factory=list)
    note: str = ""
    spread: dict = field(default_factory=dict)  # margin, se, n of the paired difference(s); {"n": 1} if none

    def as_dict(self) -> dict:
        return asdict(self)


def claim(id_: str, statement: str, measured: dict | None = None, test: str = "", threshold: dict | None = None,
          figures=(), note: str = "") -> Claim:
    """A claim record; `held` is the verdict of `test` evaluated over `measured` and `threshold` (a verdict
    string, or a bool read as held / not held; None without data)."""
    measured, threshold = measured or {}, threshold or {}
    held = None
    if measured and test:
        value = eval(test, {"__builtins__": _SAFE, **measured, **threshold})  # noqa: S307 (our own expressions)
        held = _verdict_of(value)
    return Claim(id_, statement, measured, threshold, test, held, [str(f) for f in figures], note,
                 _spread_of(measured) if held is not None else {})


def _spread_of(measured: dict) -> dict:
    keys = ("margin", "se", "n")
    if "margin" in measured:
        return {k: measured.get(k) for k in keys}
    comps = measured.get("comparisons")
    if isinstance(comps, dict) and comps:
        return {name: {k: c.get(k) for k in keys} for name, c in comps.items()}
    return {"n": 1, "note": "measured once: no seed spread"}


REPLICATE = "rep_"  # a stage's further replicates live in <stage>/rep_* (see lowloss.study.mode_pairs)
JUDGE = "judge(margin, se, n, k)"
JUDGE_ALL = "judge_all(comparisons, k)"


def replicates(d: Path) -> list[Path]:
    """The run directories of a stage's replicates: the stage directory and its rep_* sub-directories that
    hold a result, in order."""
    d = Path(d)
    return [d] + sorted(p for p in d.glob(f"{REPLICATE}*") if (p / RESULT).exists())


def load_result(d: Path) -> dict | None:
    """run.json of a stage's run directory, or None when it is missing or damaged (not measured)."""
    try:
        return read_json_file(Path(d) / RESULT)
    except LowlossError:
        return None


def _safe(*ids_and_statements: tuple[str, str]):
    """A claim whose data is malformed is reported as not measured (with the error) rather than crashing."""

    def deco(fn: Callable[[Path, list[Path]], list[Claim]]):
        @functools.wraps(fn)
        def wrapped(study, modes):
            try:
                return fn(study, modes)
            except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError, OSError) as e:
                return [Claim(i, st, {"error": f"{type(e).__name__}: {e}"}) for i, st in ids_and_statements]

        wrapped.claims = ids_and_statements
        return wrapped

    return deco


S_MODES = "Independently trained networks (different seeds) reach high test accuracy."
S_LINE = "The straight line between two independently trained modes crosses a high-loss barrier."
S_CURVE = ("A trained {name} connects the two modes with a train-loss barrier at most a tenth of the line's.")
S_CURVE_ENS = ("Ensembling an endpoint with a point of the curve gains most of the two-mode ensemble's improvement "
               "well before the far end (t ~ 0.3-0.4 in the paper).")
S_PLANE_MODES = ("In the plane through three modes, the modes sit in separate low-loss regions divided by higher "
                 "loss.")
S_PLANE_CURVE = "In the plane through a Bezier curve, the curve runs through a low-loss valley between the two modes."
S_FGE = "FGE's test NLL is better than a single SGD model's at the same budget."
S_ENS = ("Every ensemble (deep, SSE, FGE, SWAG, MultiSWAG) has a better test NLL than a single model at the same "
         "budget.")
S_SWA = "SWA is at least as accurate as SGD at the same budget."
S_CSWAG = ("SWAG over a curve's bend parameters samples new curves that all stay low-loss (far below the line's "
           "maximum train loss).")
S_ESPRO = "A simplex grown from one mode (ESPRO) has positive volume and its samples are as accurate as the mode."
S_ESPRO_DEEP = "An ESPRO ensemble (3 modes x 3-vertex simplexes) beats the deep ensemble of the same modes in test NLL."
S_COMPLEX = ("Two modes are joined by a simplicial complex (SPRO) whose sampled models all stay close to the modes' "
             "test error.")
S_DIM = ("Connectors can be added between two modes one at a time while sampled models keep low train loss: the "
         "low-loss region has many dimensions (>= 10 for VGG on CIFAR-10 in the paper).")
S_CAL = ("Temperature scaling fitted on held-out data fits a T on every method, does not change accuracy and "
         "lowers held-out NLL.")
S_SHIFT = ("Under dataset shift, accuracy falls with severity and a deep ensemble keeps a lower NLL than a single "
           "model at the highest severities.")
S_VAR_DET = "A variance network (zero-mean weights) predicts at chance with the deterministic (mean-weight) scheme."
S_VAR_ENS = "With the ensemble scheme, the variance network is within 2 points of Gaussian dropout's accuracy."
S_REG = "Predictive uncertainty (the +-2 std band) is wider away from the training data than near it."
S_SPIRALS = ("Models sampled from one simplex all fit the two-spirals training data, with different decision "
             "functions.")
S_WIDTH = ("SWA's optimum is wider than SGD's along random directions, and SWA's test error is lower although its "
           "train loss is not.")


@_safe(("modes", S_MODES))
def claim_modes(study: Path, modes: list[Path]):
    runs = [load_result(d) for d in modes]
    if not all(runs):
        return [claim("modes", S_MODES)]
    acc = [r["final"]["test"]["accuracy"] for r in runs]
    return [claim("modes", S_MODES, {"test_accuracy": acc, "mean": mean(acc),
                                     **spread([a - 0.9 for a in acc], "test accuracy - 0.9, per seed")},
                  "verdict(margin, se, k)", {"min_accuracy": 0.9, "k": K_SE})]


def _half_gain_t(j: dict, max_t: float) -> dict:
    """The first t > 0 at which the {w_A, phi(t)} ensemble has half of the {w_A, w_B} ensemble's gain over the
    single model (None when never, or when the two-mode ensemble has no gain to reach)."""
    t, ens = j["t"], j["curve"]["ensemble_test_error"]
    ref = j.get("endpoint_ensemble", {}).get("test_error", ens[-1])
    single = j["curve"]["test_error"][0]
    target = ref + 0.5 * (single - ref)
    t_reach = (next((tt for tt, e in zip(t, ens) if tt > 0 and e <= target + 1e-12), None) if single > ref
               else None)
    return {"t_half_gain": t_reach, "gain": single - ref, "single_error": single, "two_mode_ensemble_error": ref,
            "line_ensemble_error_mid": j["line"]["ensemble_test_error"][len(t) // 2],
            "curve_ensemble_error_mid": ens[len(t) // 2]}


_ONCE = " (measured once: one pair of modes, so no seed spread; the sign alone decides)"


@_safe(("line_barrier", S_LINE), ("curve_bezier", S_CURVE.format(name="Bezier curve")),
       ("curve_polychain", S_CURVE.format(name="polygonal chain")))
def claim_curves(study: Path, modes: list[Path]):
    out = []
    min_barrier, fraction = 0.1, 0.1
    for kind, name in (("bezier", "Bezier curve"), ("polychain", "polygonal chain")):
        d = study / f"connect_{kind}"
        dirs = replicates(d)
        runs = [r for r in (load_result(x) for x in dirs) if r is not None]
        stmt = S_CURVE.format(name=name)
        if not runs:
            out += ([claim("line_barrier", S_LINE), claim("curve_bezier", stmt)]
                    if kind == "bezier" else [claim(f"curve_{kind}", stmt)])
            continue
        line = [r["summary"]["line"] for r in runs]
        curve = [r["summary"]["curve"] for r in runs]
        figs = [d / "curve.png"]
        note = f"{len(runs)} pair(s) of modes" + (_ONCE if len(runs) == 1 else ", each difference on its own pair")
        if kind == "bezier":
            out.append(claim("line_barrier", S_LINE,
                             {"line_barrier": [x["barrier"] for x in line],
                              "line_max_train_loss": [x["max_train_loss"] for x in line],
                              "line_max_test_error": [x["max_test_error"] for x in line],
                              **spread([x["barrier"] - min_barrier for x in line],
                                       "line barrier - min_barrier, per pair of modes")},
                             JUDGE, {"min_barrier": min_barrier, "k": K_SE}, figs, note))
        out.append(claim(f"curve_{kind}", stmt,
                         {"curve_barrier": [x["barrier"] for x in curve], "line_barrier": [x["barrier"] for x in line],
                          "curve_max_train_loss": [x["max_train_loss"] for x in curve],
                          "curve_max_test_error": [x["max_test_error"] for x in curve],
                          **spread([fraction * x["barrier"] - c["barrier"] for x, c in zip(line, curve)],
                                   "fraction * line barrier - curve barrier, per pair of modes")},
                         JUDGE, {"fraction": fraction, "k": K_SE}, figs, note))
    return out


@_safe(("curve_ensemble", S_CURVE_ENS))
def claim_curve_ensemble(study: Path, modes: list[Path]):
    max_t = 0.6
    d = study / "connect1d"
    runs = [r for r in (load_result(x) for x in replicates(d)) if r is not None]
    if not runs:
        return [claim("curve_ensemble", S_CURVE_ENS)]
    gains = [_half_gain_t(r, max_t) for r in runs]
    measured = {key: [g[key] for g in gains] for key in gains[0]}
    measured.update(spread([max_t - (g["t_half_gain"] if g["t_half_gain"] is not None else 1.0) for g in gains],
                           "max_t - t of half the ensemble gain (1 when never, or when the two modes ensembled "
                           "gain nothing), per pair of modes"))
    data = (runs[0].get("data") or {}).get("name", "MNIST-1D")
    note = (f"{len(runs)} pair(s) of {data} modes, Bezier curves; test error of the ensemble of A with the point "
            "at t" + (_ONCE if len(runs) == 1 else ""))
    if any(g["gain"] <= 0 for g in gains):
        note += "; a pair whose two-mode ensemble is no better than A alone has no gain to reach (t counted as 1)"
    n_test = (runs[0].get("data") or {}).get("test_size")
    if judge(measured["margin"], measured["se"], measured["n"]) != HELD and n_test:
        note += ("; the two-mode ensembles gain " + ", ".join(f"{g['gain'] * 100:.1f}" for g in gains)
                 + f" points of test error ({', '.join(str(round(g['gain'] * n_test)) for g in gains)} of {n_test} "
                 "examples), so half of a gain is a few examples and the t that reaches it ("
                 + ", ".join("never" if g["t_half_gain"] is None else f"{g['t_half_gain']:.2f}" for g in gains)
                 + ") moves with single examples")
    return [claim("curve_ensemble", S_CURVE_ENS, measured, JUDGE, {"max_t": max_t, "k": K_SE},
                  [d / "ensemble.png"], note)]


def _plane_measure(d: Path) -> dict:
    import numpy as np

    j = load_result(d)
    try:
        z = load_npz(d / "plane.npz") if j is not None else None
    except LowlossError:
        z = None
    if z is None:
        return {}
    m = {"grid": int(z["train_loss"].shape[0]) if "train_loss" in z else None}
    for k in ("seconds", "points_per_second"):
        if k in j:
            m[k] = j[k]
    if "train_loss" in z:
        m["min_train_loss"] = float(np.nanmin(z["train_loss"]))
        m["max_train_loss"] = float(np.nanmax(z["train_loss"]))
    return m


_PLANE_TEST = "max_train_loss > ratio * max(min_train_loss, floor)"


def plane_ridges(d: Path, samples: int = 101) -> dict:
    """For each pair of the anchors of the plane run in `d`: the highest train loss on the segment between them
    (the grid's log loss interpolated bilinearly) and the higher of the two anchors' own (exact) train losses.
    {} when the run or its arrays are missing."""
    import numpy as np
    from scipy.interpolate import RegularGridInterpolator

    j = load_result(d)
    try:
        z = load_npz(d / "plane.npz") if j is not None else None
    except LowlossError:
        z = None
    if z is None or "train_loss" not in z or "point_coords" not in z:
        return {}
    interp = RegularGridInterpolator((z["y"], z["x"]), np.log(np.maximum(z["train_loss"], 1e-12)))
    coords, labels = z["point_coords"], [str(x) for x in z["point_labels"]]
    out = {}
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            t = np.linspace(0, 1, samples)[:, None]
            seg = (1 - t) * coords[a] + t * coords[b]
            ridge = float(np.exp(interp(seg[:, ::-1]).max()))
            ends = max(j["points"][labels[a]]["train_loss"], j["points"][labels[b]]["train_loss"])
            out[f"{labels[a]}-{labels[b]}"] = {"ridge_train_loss": ridge, "modes_train_loss": ends}
    return out


@_safe(("plane_modes", S_PLANE_MODES), ("plane_curve", S_PLANE_CURVE))
def claim_planes(study: Path, modes: list[Path]):
    ratio, floor = 5, 1e-3
    d = study / "plane_modes"
    m, ridges = _plane_measure(d), plane_ridges(d)
    if ridges:
        m.update({"pairs": ridges, **spread([r["ridge_train_loss"] - ratio * max(r["modes_train_loss"], floor)
                                             for r in ridges.values()],
                                            "highest train loss between two modes in the plane - ratio * "
                                            "max(the two modes' train loss, floor), per pair of modes")})
    out = [claim("plane_modes", S_PLANE_MODES, m, JUDGE if ridges else "", {"ratio": ratio, "floor": floor, "k": K_SE},
                 sorted(d.glob("plane_*.png")),
                 "one plane through the study's three modes; each of the three pairs of modes is one comparison: "
                 "the highest train loss on the segment between them (the plane's log loss interpolated between "
                 "grid points) against the modes' own")]
    d = study / "plane_curve"
    ms = [x for x in (_plane_measure(r) for r in replicates(d)) if "max_train_loss" in x]
    measured = {}
    if ms:
        measured = {k: [x.get(k) for x in ms] for k in ("grid", "min_train_loss", "max_train_loss")}
        measured.update(spread([x["max_train_loss"] - ratio * max(x["min_train_loss"], floor) for x in ms],
                               "max train loss - ratio * max(min train loss, floor), per curve"))
    out.append(claim("plane_curve", S_PLANE_CURVE, measured, JUDGE, {"ratio": ratio, "floor": floor, "k": K_SE},
                     sorted(d.glob("plane_*.png")),
                     f"{len(ms)} plane(s), one through each Bezier curve" + (_ONCE if len(ms) == 1 else "")))
    return out


@_safe(("fge_nll", S_FGE), ("ensembles_nll", S_ENS), ("swa_accuracy", S_SWA))
def claim_budget(study: Path, modes: list[Path]):
    d = study / "budget"
    j = load_result(d)
    figs = [d / "budget.png"]
    if j is None:
        return [claim("fge_nll", S_FGE), claim("ensembles_nll", S_ENS), claim("swa_accuracy", S_SWA)]
    b = "1"
    raw = j["per_seed"]
    seeds = sorted(raw["single"][b], key=int)
    data = (j.get("config") or {}).get("data", "")

    def per_seed(m, k):
        return [raw[m][b][s_][k] for s_ in seeds]

    def nll_gain(m):  # single NLL - method NLL on the same seed (> 0: the method is better)
        return spread([x - y for x, y in zip(per_seed("single", "nll"), per_seed(m, "nll"))],
                      f"single NLL - {m} NLL, per seed")

    ens = {m: nll_gain(m) for m in ("ensemble", "sse", "fge", "swag", "multiswag") if m in raw}
    cfg, acc_b = j.get("config") or {}, (j.get("accounting") or {}).get(b, {})
    note = (f"{len(seeds)} seed(s) on {data}, budget 1 = {cfg.get('epochs')} epochs; each difference is paired on "
            "the seed (same data order and initialisation), so seed-to-seed spread of the absolute numbers cancels")

    ece = (f" (test ECE {mean(per_seed('single', 'ece')):.3f})"
           if all("ece" in raw["single"][b][s_] for s_ in seeds) else "")

    def why(comps: dict, what: str) -> str:  # the comparisons that did not hold, with each method's schedule
        lost = [f"{m} ({_budget_schedule(m, acc_b.get(m, {}), cfg)}): {what} {c['margin']:+.4f}"
                + (f" ± {c['se']:.4f}" if c["se"] is not None else " (one seed)")
                for m, c in comps.items() if judge(c["margin"], c["se"], c["n"], K_SE, c.get("strict", True)) != HELD]
        if not lost:
            return ""
        return (f"; against the single network ({_budget_schedule('single', acc_b.get('single', {}), cfg)}) these "
                "did not hold: " + "; ".join(lost) + ". At one budget of a short schedule every method spends part of "
                "it away from the fully annealed end the single network reaches, and on MNIST-1D that network is "
                f"already well calibrated{ece}, so averaging under-trained members or snapshots does not pay for it")


    out = [claim("fge_nll", S_FGE, {"fge_nll": per_seed("fge", "nll"), "single_nll": per_seed("single", "nll"),
                                    **nll_gain("fge")}, "verdict(margin, se, k)", {"k": K_SE}, figs,
                 note + why({"fge": nll_gain("fge")}, "single NLL - its NLL"))
           if "fge" in raw else claim("fge_nll", S_FGE),
           claim("ensembles_nll", S_ENS, {"comparisons": ens},
                 "worst(*[verdict(c['margin'], c['se'], k) for c in comparisons.values()])", {"k": K_SE}, figs,
                 note + why(ens, "single NLL - its NLL"))]
    if "swa" in raw:
        acc = spread([x - y for x, y in zip(per_seed("swa", "accuracy"), per_seed("single", "accuracy"))],
                     "SWA accuracy - single accuracy, per seed")
        out.append(claim("swa_accuracy", S_SWA, {"swa_accuracy": per_seed("swa", "accuracy"),
                                                 "single_accuracy": per_seed("single", "accuracy"), **acc},
                         "verdict(margin, se, k, False)", {"k": K_SE}, figs,
                         note + "; 'at least as accurate': a zero margin is within noise"
                         + why({"swa": {**acc, "strict": False}}, "its accuracy - single accuracy")))
    else:
        out.append(claim("swa_accuracy", S_SWA))
    return out


def _budget_schedule(m: str, a: dict, cfg: dict) -> str:
    """How method `m` spent the budget (its accounting row in the budget run)."""
    if m == "single":
        return f"one network, {a.get('epochs')} epochs of one cosine schedule"
    if m == "ensemble":
        return f"{a.get('members')} networks of {a.get('epochs_per_member')} epochs each"
    if m == "sse":
        return f"{a.get('cycles')} cosine cycles of {a.get('cycle_epochs', 0):g} epochs from lr {cfg.get('sse_lr')}"
    if m == "fge":
        return (f"{a.get('pretrain_epochs')} epochs pretrained, then {a.get('cycles')} cycle(s) of "
                f"{a.get('cycle_epochs', 0):g} epoch(s) from lr {cfg.get('fge_lr_high')} to {cfg.get('fge_lr_low')}")
    if m in ("swa", "swag"):
        n = a.get("swa_epochs", a.get("swag_epochs"))
        return (f"{a.get('pretrain_epochs')} epochs pretrained, then {n} epoch(s) at lr {cfg.get('swa_lr')}, "
                f"{a.get('averaged', a.get('collected'))} iterates averaged")
    if m == "multiswag":
        return (f"{a.get('members')} SWAG members of {a.get('pretrain_epochs_per_member')} + "
                f"{a.get('swag_epochs_per_member')} epochs")
    return m


@_safe(("curve_swag", S_CSWAG))
def claim_curve_swag(study: Path, modes: list[Path]):
    d, fraction = study / "curve_swag", 0.25
    rows = []
    for r in replicates(d):
        j = load_result(r)
        c = load_result(study / "connect_bezier" / r.relative_to(d))
        if j is not None and c is not None:
            rows.append((j["metrics"], c["summary"]["line"]["max_train_loss"]))
    if not rows:
        return [claim("curve_swag", S_CSWAG)]
    return [claim("curve_swag", S_CSWAG,
                  {"sampled_max_train_loss_max": [m["sampled_max_train_loss_max"] for m, _ in rows],
                   "trained_curve_max_train_loss": [m["trained_curve_max_train_loss"] for m, _ in rows],
                   "line_max_train_loss": [x for _, x in rows],
                   **spread([fraction * x - m["sampled_max_train_loss_max"] for m, x in rows],
                            "fraction * line max train loss - worst sampled curve's max train loss, per curve")},
                  JUDGE, {"fraction": fraction, "k": K_SE}, sorted(d.glob("*.png")),
                  f"{len(rows)} curve(s)" + (_ONCE if len(rows) == 1 else ""))]


@_safe(("espro_simplex", S_ESPRO), ("espro_vs_deep", S_ESPRO_DEEP))
def claim_espro(study: Path, modes: list[Path]):
    d = study / "espro"
    j = load_result(d)
    if j is None:
        return [claim("espro_simplex", S_ESPRO), claim("espro_vs_deep", S_ESPRO_DEEP)]
    vols, mode_acc, sample_acc, figs = [], [], [], []
    for sx in j["simplexes"]:
        sj = load_result(Path(sx["dir"]))
        vols.append(sj["log_volume"][-1])
        mode_acc.append(sj["test"]["mode"]["accuracy"])
        sample_acc.append(sj["test"]["sample_mean"]["accuracy"])
        figs += sorted(Path(sx["dir"]).glob("*.png"))[:1]
    gap = spread([0.01 - (m - x) for m, x in zip(mode_acc, sample_acc)],
                 "0.01 - (mode accuracy - simplex sample accuracy), per simplex (one per mode seed)")
    return [
        claim("espro_simplex", S_ESPRO, {"log_volume": vols, "mode_accuracy": mode_acc,
                                         "sample_mean_accuracy": sample_acc, **gap},
              "all(isfinite(v) for v in log_volume) and verdict(margin, se, k, False)",
              {"max_gap": 0.01, "k": K_SE}, figs[:1]),
        _espro_vs_deep(j),
    ]


def _espro_vs_deep(j: dict) -> Claim:
    pairs = j.get("pairs") or {}
    measured = {"espro_nll": j["espro"]["nll"], "deep_nll": j["deep_ensemble"]["nll"], "espro": j["espro"],
                "deep_ensemble": j["deep_ensemble"]}
    why = ("; with the reference LAMBDA=1e-6 the digits simplexes stay small, so ESPRO's samples are close to the "
           "modes and the two ensembles nearly coincide")
    if pairs:
        measured.update({"pairs": {k: {"espro_nll": v["espro"]["nll"], "deep_nll": v["deep_ensemble"]["nll"]}
                                   for k, v in pairs.items()},
                         **spread([v["deep_ensemble"]["nll"] - v["espro"]["nll"] for v in pairs.values()],
                                  "deep-ensemble NLL - ESPRO NLL, per pair of modes (two-mode ensembles)")})
        note = (f"the ensembles of all {len(j['simplexes'])} modes are shown; the verdict is over the "
                f"{len(pairs)} pairs of modes, each ESPRO of two simplexes against the deep ensemble of the same two "
                "modes (the pairs share modes, so their spread understates seed-to-seed noise)")
        return claim("espro_vs_deep", S_ESPRO_DEEP, measured, JUDGE, {"k": K_SE}, [], note + why)
    measured.update(spread([j["deep_ensemble"]["nll"] - j["espro"]["nll"]],
                           "deep-ensemble NLL - ESPRO NLL (one ensemble of all modes)"))
    return claim("espro_vs_deep", S_ESPRO_DEEP, measured, "verdict(margin, se, k)", {"k": K_SE}, [],
                 "one ESPRO ensemble against one deep ensemble of the same modes: no seed spread, so at best "
                 "'within noise'" + why)


@_safe(("complex", S_COMPLEX))
def claim_complex(study: Path, modes: list[Path]):
    d, allowance = study / "complex", 0.03
    runs = [j for j in (load_result(r) for r in replicates(d)) if j is not None]
    if not runs:
        return [claim("complex", S_COMPLEX)]
    mode_err = [max(1 - m["accuracy"] for m in j["modes"]) for j in runs]
    worst_err = [max(max(sx["test_error"]) for sx in j["simplexes"]) for j in runs]
    return [claim("complex", S_COMPLEX,
                  {"mode_test_error": mode_err, "worst_sample_test_error": worst_err,
                   "simplex_log_volumes": [j.get("simplex_log_volumes") for j in runs],
                   **spread([e + allowance - w for e, w in zip(mode_err, worst_err)],
                            "mode test error + allowance - worst sample's test error, per pair of modes")},
                  "judge(margin, se, n, k, False)", {"allowance": allowance, "k": K_SE}, sorted(d.glob("*.png")),
                  f"{len(runs)} pair(s) of modes" + (_ONCE if len(runs) == 1 else ""))]


@_safe(("dimension", S_DIM))
def claim_dimension(study: Path, modes: list[Path]):
    d, min_dim, min_acc = study / "dimension", 3, 0.95
    runs = [j for j in (load_result(r) for r in replicates(d)) if j is not None]
    if not runs:
        return [claim("dimension", S_DIM)]
    dims = [j["dimension_lower_bound"] for j in runs]
    accs = [min(j["sample_train_accuracy"]) for j in runs]
    comps = {"dimension": {**spread([x - min_dim for x in dims], "dimension lower bound - min_dimension, per pair"),
                           "strict": False},
             "train_accuracy": {**spread([a - min_acc for a in accs],
                                         "worst sample train accuracy - min_accuracy, per pair"), "strict": False}}
    note = f"{len(runs)} pair(s) of modes" + (_ONCE if len(runs) == 1 else "")
    if any(j.get("collapsed_at") is None for j in runs):
        note += "; the dimension is a lower bound where the volume did not collapse within the connectors tried"
    return [claim("dimension", S_DIM,
                  {"connectors": [j["connectors"] for j in runs], "log_volume": [j["log_volume"] for j in runs],
                   "sample_train_accuracy": [j["sample_train_accuracy"] for j in runs],
                   "collapsed_at": [j.get("collapsed_at") for j in runs], "dimension_lower_bound": dims,
                   "comparisons": comps},
                  JUDGE_ALL, {"min_dimension": min_dim, "min_accuracy": min_acc, "k": K_SE}, [d / "dimension.png"],
                  note)]


@_safe(("calibration", S_CAL))
def claim_calibration(study: Path, modes: list[Path]):
    d = study / "calibration"
    j = load_result(d)
    if j is None:
        return [claim("calibration", S_CAL)]
    rows = {k: {"T": v["temperature"], "nll_before": v["before"]["nll"], "nll_after": v["after"]["nll"],
                "ece_before": v["before"]["ece"], "ece_after": v["after"]["ece"],
                "accuracy_unchanged": v["before"]["accuracy"] == v["after"]["accuracy"],
                "T_fitted": not v.get("note") and v["temperature"] != 1.0}
            for k, v in j["results"].items()}
    singles = [k for k in rows if not k.startswith("ensemble")] or list(rows)
    gain = spread([rows[k]["nll_before"] - rows[k]["nll_after"] for k in singles],
                  "held-out NLL before - after scaling, per seed (single networks)")
    ece = spread([rows[k]["ece_before"] - rows[k]["ece_after"] for k in singles])
    data = (j.get("data") or {}).get("name", "")
    why = ""
    if gain["margin"] is not None and gain["margin"] <= 0:
        ece_b = mean(rows[k]["ece_before"] for k in singles)
        why = (f"; here the single networks are already nearly calibrated (held-out ECE {ece_b:.3f} before "
               "scaling), so the T fitted on one half (between "
               f"{min(rows[k]['T'] for k in singles):.2f} and {max(rows[k]['T'] for k in singles):.2f}) "
               "does not lower NLL on the other half")
    # the shift stage fits a T for every method it compares (single, deep ensemble, MultiSWA, MultiSWAG, ...)
    sj = load_result(study / "shift")
    info = (sj or {}).get("info", {})
    shift_t = info.get("temperatures", {})
    shift_fitted = {m: t != 1.0 and m not in info.get("temperature_notes", {}) for m, t in shift_t.items()}
    return [claim("calibration", S_CAL, {"runs": rows, "shift_temperatures": shift_t, "shift_T_fitted": shift_fitted,
                                         **gain, "ece_gain": ece},
                  "all(r['accuracy_unchanged'] and r['T_fitted'] for r in runs.values()) and "
                  "all(shift_T_fitted.values()) and verdict(margin, se, k)",
                  {"k": K_SE}, [d / "reliability.png"],
                  f"on {data}: T is fitted on a fixed half of the test split and scored on the other half, for each "
                  "network, their ensemble, and every method of the shift stage (shift_temperatures); a method whose "
                  "fitting half has no error keeps T = 1 (not identifiable), which fails the claim" + why)]


@_safe(("shift", S_SHIFT))
def claim_shift(study: Path, modes: list[Path]):
    d = study / "shift"
    j = load_result(d)
    if j is None or "members" not in j:
        return [claim("shift", S_SHIFT)]
    info = j["info"]
    shifts, sevs = info["corruptions"], [str(s_) for s_ in info["severities"]]

    def avg(rows, metric):  # mean over the shifts
        return sum(r[metric] for r in rows) / len(rows)

    mem = j["members"]
    n = len(mem["clean"])
    ens = {s_: avg([j["ensemble"][c][s_] for c in shifts], "nll") for s_ in sevs}
    single_acc = {s_: [avg([mem[c][s_][i] for c in shifts], "accuracy") for i in range(n)] for s_ in sevs}
    single_nll = {s_: [avg([mem[c][s_][i] for c in shifts], "nll") for i in range(n)] for s_ in sevs}
    clean_acc = [m["accuracy"] for m in mem["clean"]]
    top = sevs[-2:]
    comps = {f"nll_severity_{s_}": spread([x - ens[s_] for x in single_nll[s_]],
                                          f"single NLL - deep-ensemble NLL at severity {s_}, per member seed")
             for s_ in top}
    comps["accuracy_fall"] = spread([c - a for c, a in zip(clean_acc, single_acc[sevs[-1]])],
                                    f"clean accuracy - accuracy at severity {sevs[-1]}, per member seed")
    data = info.get("data", {}).get("name", "")
    return [claim("shift", S_SHIFT,
                  {"data": data, "shifts": shifts, "severities": [int(x) for x in sevs],
                   "single_accuracy_mean": {s_: mean(v) for s_, v in single_acc.items()},
                   "single_clean_accuracy_mean": mean(clean_acc),
                   "ensemble_accuracy": {s_: avg([j["ensemble"][c][s_] for c in shifts], "accuracy") for s_ in sevs},
                   "single_nll_mean": {s_: mean(v) for s_, v in single_nll.items()}, "ensemble_nll": ens,
                   "other_nll": {m: {s_: avg([j[m][c][s_] for c in shifts], "nll") for s_ in sevs}
                                 for m in ("multiswa", "multiswag", "espro") if m in j},
                   "comparisons": comps},
                  "worst(*[verdict(c['margin'], c['se'], k) for c in comparisons.values()])", {"k": K_SE},
                  [d / "shift.png"],
                  f"{data}: every member of the deep ensemble alone is a 'single model' (the spread over seeds); "
                  "numbers are means over the shifts; MultiSWAG's NLL (other_nll) is shown, not tested: it is one "
                  "ensemble, with no seed spread of its own")]


@_safe(("variance_deterministic", S_VAR_DET), ("variance_ensemble", S_VAR_ENS))
def claim_vardrop(study: Path, modes: list[Path]):
    d, chance, max_gap = study / "vardrop", 0.2, 0.02
    accs = []
    for r in replicates(d):
        j = load_result(r)
        j = j.get("schemes") if j else None
        if j and "variance" in j:
            accs.append({p: {k: j[p][k]["accuracy"] for k in ("stochastic", "deterministic", "ensemble")} for p in j
                         if isinstance(j[p], dict) and "ensemble" in j[p]})
    if not accs:
        return [claim("variance_deterministic", S_VAR_DET), claim("variance_ensemble", S_VAR_ENS)]
    figs = [d / "log_alpha.png"]
    note = f"{len(accs)} seed(s)" + (_ONCE.replace("one pair of modes", "one seed") if len(accs) == 1 else "")
    det = spread([chance - a["variance"]["deterministic"] for a in accs],
                 "chance level - variance network's deterministic accuracy, per seed")
    ens = (spread([max_gap - (a["dropout"]["ensemble"] - a["variance"]["ensemble"]) for a in accs],
                  "max_gap - (dropout ensemble accuracy - variance ensemble accuracy), per seed")
           if all("dropout" in a for a in accs) else {})
    gaps = ", ".join(f"{(a['dropout']['ensemble'] - a['variance']['ensemble']) * 100:.1f}" for a in accs
                     if "dropout" in a)
    return [
        claim("variance_deterministic", S_VAR_DET, {"accuracy": accs, **det}, "judge(margin, se, n, k, False)",
              {"chance_level": chance, "k": K_SE}, figs, note),
        claim("variance_ensemble", S_VAR_ENS, {"accuracy": accs, **ens} if ens else {},
              "judge(margin, se, n, k, False)", {"max_gap": max_gap, "k": K_SE}, figs,
              note + "; the slides train 200 epochs on full MNIST; with more variance layers than the default one "
              "(--variance-layers) a variance network needs far more steps than this study spends"
              + (f"; the gaps (dropout - variance ensemble accuracy) are {gaps} points against the {max_gap * 100:g}-point bound, and they spread as much as the bound's margin"
                 if ens and judge(ens["margin"], ens["se"], ens["n"], K_SE, False) == WITHIN_NOISE else "")),
    ]


@_safe(("regression", S_REG))
def claim_regression(study: Path, modes: list[Path]):
    d, ratio = study / "regression", 2
    runs = [j for j in (load_result(r) for r in replicates(d)) if j is not None]
    if not runs:
        return [claim("regression", S_REG)]
    meas = [{m: {"test_ll": r["test_ll"], **{f"std_{k}": v for k, v in r.get("mean_epistemic_std", {}).items()}}
             for m, r in j["results"].items()} for j in runs]
    comps = {}
    for m in ("ensemble", "espro"):
        rows = [x[m] for x in meas if m in x and "std_near_data" in x[m]]
        if rows:
            comps[m] = spread([r["std_away_from_data"] / r["std_near_data"] - ratio for r in rows],
                              f"{m}: std away / std near the data - ratio, per seed")
    return [claim("regression", S_REG, {"methods": meas, "comparisons": comps} if comps else {}, JUDGE_ALL,
                  {"ratio": ratio, "k": K_SE}, [d / "regression.png"],
                  f"{len(runs)} seed(s) of the toy data and models"
                  + (_ONCE.replace("one pair of modes", "one seed") if len(runs) == 1 else ""))]


S_REG_PATHS = ("Along a low-loss curve between two regression modes the predictive functions differ away from the "
               "data (pointwise spread across marked points at least twice that near the data), while the train "
               "loss stays within twice the modes'.")


@_safe(("regression_paths", S_REG_PATHS))
def claim_regression_paths(study: Path, modes: list[Path]):
    d, ratio, factor = study / "regression_paths", 2, 2
    runs = [j for j in (load_result(r) for r in replicates(d)) if j is not None and j.get("functions")]
    if not runs:
        return [claim("regression_paths", S_REG_PATHS)]
    spreads = [j["functions"]["spread"]["curve"] for j in runs]
    ends = [max(e["train_loss"] for e in j["endpoints"].values()) for j in runs]
    path_max = [j["summary"]["curve"]["max_train_loss"] for j in runs]
    comps = {"spread": spread([x["away_from_data"] - ratio * x["near_data"] for x in spreads],
                              "std away from the data - ratio * std near it, per seed"),
             "train_loss": {**spread([factor * e - m for e, m in zip(ends, path_max)],
                                     "factor * endpoints' max train loss - curve's max train loss, per seed"),
                            "strict": False}}
    return [claim("regression_paths", S_REG_PATHS,
                  {"std_away_from_data": [x["away_from_data"] for x in spreads],
                   "std_near_data": [x["near_data"] for x in spreads],
                   "line_std_away_from_data": [j["functions"]["spread"]["line"]["away_from_data"] for j in runs],
                   "curve_max_train_loss": path_max, "endpoint_max_train_loss": ends,
                   "line_max_train_loss": [j["summary"]["line"]["max_train_loss"] for j in runs],
                   "marks": len(runs[0]["marks"]["t"]), "comparisons": comps},
                  JUDGE_ALL, {"ratio": ratio, "factor": factor, "k": K_SE},
                  [d / "regression_path.png", d / "video" / "training.gif"],
                  f"{len(runs)} seed(s); spread = mean over inputs of the standard deviation of the functions at "
                  f"{len(runs[0]['marks']['t'])} equally spaced t (ends included), 'away' = farther than "
                  f"{runs[0]['functions']['away_distance']} from every training input; the GIF is the curve's "
                  "training (the plane of the curve at each frame)"
                  + (_ONCE.replace("one pair of modes", "one seed") if len(runs) == 1 else ""))]


@_safe(("spirals", S_SPIRALS))
def claim_spirals(study: Path, modes: list[Path]):
    d, min_acc, min_dis = study / "spirals", 0.95, 0.01
    runs = [j for j in (load_result(r) for r in replicates(d)) if j is not None]
    if not runs:
        return [claim("spirals", S_SPIRALS)]
    accs = [min(x["train_accuracy"] for x in j["samples"]) for j in runs]
    dis = [j["grid_disagreement"] for j in runs]
    comps = {"train_accuracy": {**spread([a - min_acc for a in accs], "worst sample train accuracy - min_accuracy, "
                                                                      "per seed"), "strict": False},
             "disagreement": spread([x - min_dis for x in dis], "grid disagreement - min_disagreement, per seed")}
    return [claim("spirals", S_SPIRALS,
                  {"min_sample_train_accuracy": accs, "grid_disagreement": dis,
                   "ensemble_test_accuracy": [j["ensemble"]["test_accuracy"] for j in runs], "comparisons": comps},
                  JUDGE_ALL, {"min_accuracy": min_acc, "min_disagreement": min_dis, "k": K_SE}, [d / "spirals.png"],
                  f"{len(runs)} seed(s)" + (_ONCE.replace("one pair of modes", "one seed") if len(runs) == 1 else ""))]


S_ALIGN = ("After permuting B's hidden units to match A (weight matching), the straight line between A and B has a "
           "train-loss barrier below half of the unaligned line's (MLP and convnet, three seed pairs each).")
S_ALIGN_CURVE = "A curve trained between A and the aligned B is at least as low as one trained between A and B."
S_NEB = ("AutoNEB (a nudged elastic band) finds a path between the same two modes whose train-loss barrier is at "
         "most a tenth of the line's, as the trained curve does; costs are counted in gradient evaluations.")


@_safe(("align_line", S_ALIGN), ("align_curve", S_ALIGN_CURVE))
def claim_align(study: Path, modes: list[Path]):
    d = study / "align"
    if not d.is_dir():
        return [claim("align_line", S_ALIGN), claim("align_curve", S_ALIGN_CURVE)]
    comps, rows, figs = {}, {}, []
    for arch in sorted(p.name for p in d.iterdir() if p.is_dir()):
        runs = [(p.name, load_result(p)) for p in sorted((d / arch).glob("align*"))]
        runs = [(n, j) for n, j in runs if j is not None and "summary" in j]
        if not runs:
            continue
        before = [j["summary"]["barrier_before"] for _, j in runs]
        after = [j["summary"]["barrier_after"] for _, j in runs]
        rows[arch] = {"pairs": [n[len("align"):] for n, _ in runs], "barrier_before": before,
                      "barrier_after": after}
        comps[arch] = spread([0.5 * b - a for b, a in zip(before, after)],
                             "half the A-B line barrier - the A-aligned-B line barrier, per seed pair")
        figs.append(d / arch / runs[0][0] / "line.png")
    out = [claim("align_line", S_ALIGN, {"models": rows, "comparisons": comps} if comps else {},
                 "worst(*[verdict(c['margin'], c['se'], k) for c in comparisons.values()])",
                 {"fraction": 0.5, "k": K_SE}, figs)]
    pairs = []  # (plain curve, aligned curve) of every MLP pair: mlp/ then mlp/rep_*/
    for r in [d / "mlp"] + sorted((d / "mlp").glob(f"{REPLICATE}*")):
        plain, aligned = load_result(r / "curve"), load_result(r / "curve_aligned")
        if plain is not None and aligned is not None:
            pairs.append((plain["summary"]["curve"], aligned["summary"]["curve"]))
    if not pairs:
        out.append(claim("align_curve", S_ALIGN_CURVE))
    else:
        out.append(claim("align_curve", S_ALIGN_CURVE,
                         {"curve_barrier": [p["barrier"] for p, _ in pairs],
                          "aligned_curve_barrier": [a["barrier"] for _, a in pairs],
                          "curve_max_train_loss": [p["max_train_loss"] for p, _ in pairs],
                          "aligned_curve_max_train_loss": [a["max_train_loss"] for _, a in pairs],
                          **spread([p["barrier"] - a["barrier"] for p, a in pairs],
                                   "curve barrier - aligned curve barrier, per MLP pair")},
                         "judge(margin, se, n, k, False)", {"k": K_SE},
                         [d / "mlp" / "curve_aligned" / "curve.png"],
                         f"{len(pairs)} MLP pair(s), one curve before and one after alignment each"
                         + (_ONCE if len(pairs) == 1 else "") + "; 'at least as low': equal barriers count"))
    return out


@_safe(("neb_path", S_NEB))
def claim_paths(study: Path, modes: list[Path]):
    fraction = 0.1
    pairs = []  # (NEB run, curve run) of every MLP pair: paths/neb with align/mlp/curve, then the rep_* pairs
    for r in [study / "paths"] + sorted((study / "paths").glob(f"{REPLICATE}*")):
        neb = load_result(r / "neb")
        curve = load_result(study / "align" / "mlp" / r.relative_to(study / "paths") / "curve")
        if neb is not None and curve is not None:
            pairs.append((neb, curve))
    if not pairs:
        return [claim("neb_path", S_NEB)]
    from .plots.paths import draw_path_costs

    neb, curve = pairs[0]
    line = curve["summary"]["line"]
    rows = {"line": {"gradient_evaluations": 0, **line},
            "curve (Bezier, 1 bend)": {"gradient_evaluations": curve["cost"]["gradient_evaluations"],
                                       **curve["summary"]["curve"]},
            f"neb ({neb['cost']['pivots']} pivots)": {"gradient_evaluations": neb["cost"]["gradient_evaluations"],
                                                      **neb["summary"]["curve"], "rounds": neb["history"]}}
    fig = draw_path_costs(rows, study / "paths" / "paths.png")
    table = {k: {m: v[m] for m in ("gradient_evaluations", "barrier", "max_train_loss", "max_test_error")}
             for k, v in rows.items()}
    lines = [c["summary"]["line"]["barrier"] for _, c in pairs]
    nebs = [n["summary"]["curve"]["barrier"] for n, _ in pairs]
    return [claim("neb_path", S_NEB, {"neb_barrier": nebs, "curve_barrier": [c["summary"]["curve"]["barrier"]
                                                                             for _, c in pairs],
                                      "line_barrier": lines, "paths_first_pair": table,
                                      **spread([fraction * b - n for b, n in zip(lines, nebs)],
                                               "fraction * line barrier - NEB barrier, per MLP pair")},
                  "all(b > 0 for b in line_barrier) and judge(margin, se, n, k, False)",
                  {"fraction": fraction, "k": K_SE}, [fig, study / "paths" / "neb" / "curve.png"],
                  f"{len(pairs)} MLP pair(s), one path each" + (_ONCE if len(pairs) == 1 else "")
                  + "; the table (first pair) compares barriers, maximum train loss, test error and gradient "
                  "evaluations (one network's forward and backward pass over one minibatch)")]


@_safe(("width", S_WIDTH))
def claim_width(study: Path, modes: list[Path]):
    d = study / "width"
    runs = [j for j in (load_result(r) for r in replicates(d)) if j is not None and "width" in j]
    if not runs:
        return [claim("width", S_WIDTH)]
    w = [j["width"] for j in runs]
    p = [j["points"] for j in runs]
    comps = {"width": spread([x["swa"]["mean"] - x["sgd"]["mean"] for x in w],
                             "SWA width - SGD width (mean over the random directions), per seed"),
             "test_error": spread([x["sgd"]["test_error"] - x["swa"]["test_error"] for x in p],
                                  "SGD test error - SWA test error, per seed"),
             "train_loss": {**spread([x["swa"]["train_loss"] - x["sgd"]["train_loss"] for x in p],
                                     "SWA train loss - SGD train loss (NLL + L2), per seed"), "strict": False}}
    first = w[0]
    return [claim("width", S_WIDTH,
                  {"sgd_width": [x["sgd"]["mean"] for x in w], "swa_width": [x["swa"]["mean"] for x in w],
                   "sgd_train_loss": [x["sgd"]["train_loss"] for x in p],
                   "swa_train_loss": [x["swa"]["train_loss"] for x in p],
                   "sgd_test_error": [x["sgd"]["test_error"] for x in p],
                   "swa_test_error": [x["swa"]["test_error"] for x in p],
                   "directions": first["directions"], "kind": first["kind"], "rise": first["rise"],
                   "first_seed_width_difference": {k: first["difference"][k] for k in ("mean", "se", "n")},
                   "comparisons": comps},
                  JUDGE_ALL, {"k": K_SE}, [d / "width_line.png", d / "width_rays.png"],
                  f"{len(runs)} seed(s); per seed, SGD is the mode and SWA continues from it at the modes' peak "
                  "learning rate; the width is the distance along a filter-normalised random direction at which the "
                  f"train loss (NLL + L2) rises by {first['rise']}; the train-loss comparison holds when SWA's is not "
                  "lower (>= 0)" + ("; one seed is judged on the signs alone, with the first seed's spread over "
                                    "directions shown in first_seed_width_difference" if len(runs) == 1 else "")
                  + _lost(comps)
                  + ("; SWA's train loss is lower here because averaging shrinks the weights (the L2 term falls)"
                     if comps["train_loss"]["margin"] < 0 else ""))]


def _lost(comps: dict) -> str:
    """'; did not hold: name margin ± SE, ...' for the comparisons of a claim whose verdict is not 'held'."""
    lost = [f"{k} {c['margin']:+.4g}" + (f" ± {c['se']:.2g}" if c.get("se") is not None else " (one seed)")
            for k, c in comps.items() if judge(c["margin"], c["se"], c["n"], K_SE, c.get("strict", True)) != HELD]
    return "; did not hold: " + ", ".join(lost) if lost else ""


S_SIGHTSEE = ("A plane next to a mode can be trained so that its loss draws a picture: on grid points never "
             "trained on, log train loss correlates with the picture's lightness (r > 0.5, the picture recognisable).")


@_safe(("sightsee", S_SIGHTSEE))
def claim_sightsee(study: Path, modes: list[Path]):
    d = study / "sightsee"
    runs = [j for j in (load_result(r) for r in replicates(d)) if j is not None]
    if not runs:
        return [claim("sightsee", S_SIGHTSEE)]
    corr = [j["agreement"]["held_out"] for j in runs]
    min_corr = 0.5
    return [claim("sightsee", S_SIGHTSEE,
                  {"held_out_correlation": corr, "trained_correlation": [j["agreement"]["trained"] for j in runs],
                   "origin_test_accuracy": [j["origin"]["test_accuracy"] for j in runs],
                   "run_test_accuracy": [j["run_test_accuracy"] for j in runs],
                   **spread([c - min_corr for c in corr],
                            "held-out correlation of picture lightness and log train loss - min_correlation, per seed")},
                  JUDGE, {"min_correlation": min_corr, "k": K_SE}, [d / "sightsee.png"],
                  f"{len(runs)} digits MLP(s) of the align stage, the built-in 16x16 'LL', the plane trained "
                  f"{(runs[0].get('config') or {}).get('epochs')} epochs; the origin moves away from "
                  "the mode to make room for the picture, so its test accuracy is below the mode's"
                  + (_ONCE.replace("one pair of modes", "one seed") if len(runs) == 1 else "")
                  + ("" if all(c > min_corr for c in corr) else
                     f"; held-out r = {', '.join(f'{c:.2f}' for c in corr)} against the bar {min_corr}: the loss "
                     "follows the picture more closely with more epochs (quick 4: r = 0.33; full 20: r = 0.41-0.56 "
                     "over three seeds), and 20 are not enough for every seed"))]


CLAIMS = [claim_modes, claim_curves, claim_curve_ensemble, claim_planes, claim_budget, claim_curve_swag, claim_espro, claim_complex,
          claim_dimension, claim_calibration, claim_shift, claim_vardrop, claim_regression, claim_regression_paths, claim_spirals,
          claim_align, claim_paths, claim_sightsee, claim_width]


def collect_claims(study: Path, modes: list[Path]) -> list[dict]:
    """Every claim of :data:`CLAIMS` for the study in `study` whose independent modes are the runs `modes`,
    as dicts (see :class:`Claim`)."""
    return [c.as_dict() for fn in CLAIMS for c in fn(Path(study), [Path(m) for m in modes])]
