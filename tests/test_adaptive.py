"""Adaptive planes: the refinement on analytic surfaces (the error model on a surface whose interpolation error
is known in closed form, points saved, tolerance met, features found, exact points, any lattice size), and the
plane command with --adaptive (resume, the tiny-tolerance limit, errors)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_plane_setup
from lowloss.config import replace
from lowloss.methods import plane as PL
from lowloss.subspaces.adaptive import (
    RATE,
    axis_nodes,
    child_miss,
    coarse_spacing,
    lattice_neighbours,
    nearest_indices,
    polyline_indices,
    refine,
)
from lowloss.utils import LowlossError


def surface(f, shape):
    """Truth arrays of f(x, y) on [0, 1]^2 and an `evaluate` that reveals them, counting calls."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    x, y = x / (nx - 1), y / (ny - 1)
    loss = f(x, y)
    truth = {"loss": loss.ravel(), "error": np.clip(loss / (2 * loss.max()), 0, 1).ravel()}
    known = {m: np.full(nx * ny, np.nan) for m in truth}
    calls = []

    def evaluate(idx):
        calls.append(len(idx))
        for m in truth:
            known[m][idx] = truth[m][idx]
        return known

    return truth, evaluate, calls


SCALES = {"loss": "log", "error": "linear"}


def bowl(x, y):
    return 0.05 + (x - 0.31) ** 2 + 2 * (y - 0.58) ** 2


def spike(x, y):
    return bowl(x, y) + 3 * np.exp(-((x - 0.77) ** 2 + (y - 0.21) ** 2) / 2e-4)


def log_miss(out, truth, shape):
    return np.abs(np.log10(out["values"]["loss"]) - np.log10(truth["loss"].reshape(shape)))


def test_smooth_surface_needs_few_points_and_meets_tolerance():
    shape = (257, 257)
    truth, evaluate, calls = surface(bowl, shape)
    out = refine(shape, evaluate, SCALES, 0.01)
    assert out["spacing"] == 16 and axis_nodes(257, 16)[-1] == 256
    ev = out["evaluated"]
    assert ev.mean() < 0.05  # far fewer points than the lattice
    assert log_miss(out, truth, shape).max() < 0.01
    err = np.abs(out["values"]["error"] - truth["error"].reshape(shape))
    assert (err <= 0.01 + 0.01 * np.log(10) * truth["error"].reshape(shape)).all()
    # evaluated points carry their exact values; one evaluate call per round, each point asked once
    for m in truth:
        np.testing.assert_array_equal(out["values"][m][ev], truth[m].reshape(shape)[ev])
    assert sum(calls) >= ev.sum() and sum(out["levels"]) == ev.sum() and len(calls) == len(out["levels"])


def test_error_model_on_a_quadratic_in_log10():
    """log10 loss = -1 + a x^2 + b y^2 on [0, 1]^2: bilinear interpolation of a cell of width w (in x and y)
    errs by a w^2 u(1-u) + b w^2 v(1-v), at most (a + b) w^2 / 4 at its centre, which is then its miss; every
    halving divides it by 4 exactly. With a + b = 30.72 on a 257-point lattice (coarse spacing 16, w = 1/16)
    the coarse cells miss by 3 tolerances of 0.01: their halves (w = 1/32) err by 0.75 tolerance, so the rule
    stops after one level, on the 33 x 33 sub-lattice of spacing 8, with a largest error of exactly 0.0075.
    The plain rule (rate 1) splits every cell once more: 65 x 65 points, error 0.0075 / 4."""
    shape, a, b = (257, 257), 20.48, 10.24
    truth, evaluate, _ = surface(lambda x, y: 10.0 ** (-1 + a * x ** 2 + b * y ** 2), shape)
    scales = {"loss": "log"}
    out = refine(shape, evaluate, scales, 0.01, minimum=False)
    assert out["spacing"] == 16 and out["refined"] == [0] and out["split_by"] == {"loss": 0}
    assert out["rates"] == {"log": RATE, "linear": RATE}
    sub = np.zeros(shape, bool)
    sub[::8, ::8] = True
    np.testing.assert_array_equal(out["evaluated"], sub)
    err = log_miss(out, truth, shape)
    assert err.max() == pytest.approx(0.0075, rel=1e-9)
    # the largest error sits at the centres of the finished cells (width 8), as the model says
    assert err[4, 4] == pytest.approx(0.0075, rel=1e-9) and err[8, 8] == 0

    _, evaluate_plain, _ = surface(lambda x, y: 10.0 ** (-1 + a * x ** 2 + b * y ** 2), shape)
    plain = refine(shape, evaluate_plain, scales, 0.01, minimum=False, rate=1.0)
    assert plain["refined"] == [256, 0] and plain["split_by"] == {"loss": 256}
    sub = np.zeros(shape, bool)
    sub[::4, ::4] = True
    np.testing.assert_array_equal(plain["evaluated"], sub)
    assert log_miss(plain, truth, shape).max() == pytest.approx(0.0075 / 4, rel=1e-9)

    # twice the curvature: the coarse cells miss by 6, their halves would err by 1.5 > 1: split once
    _, evaluate_steep, _ = surface(lambda x, y: 10.0 ** (-1 + 2 * a * x ** 2 + 2 * b * y ** 2), shape)
    steep = refine(shape, evaluate_steep, scales, 0.01, minimum=False)
    assert steep["refined"] == [256, 0] and steep["evaluated"].sum() == 65 * 65


def test_predicted_error_uses_the_measured_rate():
    # no parent (inf) or a parent missing by 4x or more: the smooth rate 1/4
    pred, r = child_miss([2.0, 2.0, 2.0], [np.inf, 8.0, 100.0])
    np.testing.assert_allclose(pred, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(r, [RATE] * 3)
    # a miss shrinking more slowly than h^2 predicts with its own rate: m^2 / M, up to m when it does not shrink
    np.testing.assert_allclose(child_miss([2.0, 2.0, 3.0], [4.0, 2.0, 1.0])[0], [1.0, 2.0, 3.0])
    # a lineage that was seen converging slowly keeps its rate (per cell), whatever this level's ratio
    np.testing.assert_allclose(child_miss([2.0, 2.0], [8.0, 8.0], rate=[0.5, 1.0])[0], [1.0, 2.0])
    assert child_miss([np.inf], [np.inf])[0][0] == np.inf


@pytest.mark.parametrize("slope", [0.4, 4.0])
def test_crease_is_refined_to_tolerance(slope):
    """log10 loss with a crease along a slanted line (its slope jumps by 2 * slope): interpolation across it
    errs like h, not h^2, which the measured rates see; the evaluated points gather along the crease."""
    shape = (257, 257)
    f = lambda x, y: 10.0 ** (-1 + slope * np.abs(x - 0.3 - 0.2 * y) + 0.3 * y ** 2)  # noqa: E731
    truth, evaluate, _ = surface(f, shape)
    out = refine(shape, evaluate, {"loss": "log"}, 0.01, minimum=False)
    assert log_miss(out, truth, shape).max() <= 0.01
    y, x = np.mgrid[0:257, 0:257] / 256
    near = np.abs(x - 0.3 - 0.2 * y) < 0.02
    ev = out["evaluated"]
    assert ev[near].mean() > (1 if slope < 1 else 10) * ev[~near].mean() and ev.mean() < 0.05


def test_sharp_feature_is_refined_where_it_is():
    shape = (257, 257)
    truth, evaluate, _ = surface(spike, shape)
    out = refine(shape, evaluate, SCALES, 0.01)
    ev = out["evaluated"]
    iy, ix = round(0.21 * 256), round(0.77 * 256)
    near = ev[iy - 8:iy + 9, ix - 8:ix + 9].mean()
    far = ev[150:, :100].mean()
    assert near > 0.5 and far < 0.1 and near > 5 * far
    assert len(out["refined"]) >= 4 and out["refined"][-1] > 0  # refined down to the finest level
    assert log_miss(out, truth, shape).max() < 0.05
    smooth, evaluate_smooth, _ = surface(bowl, shape)
    assert ev.sum() > refine(shape, evaluate_smooth, SCALES, 0.01)["evaluated"].sum()


def test_required_points_and_minimum_are_evaluated():
    shape = (129, 129)
    xs = ys = np.linspace(-1.0, 2.0, 129)
    line = np.array([[-0.5, -0.7], [0.4, 1.3], [1.9, 0.2]])
    req = polyline_indices(xs, ys, line)
    # the lattice points nearest to every point of the drawn line
    t = np.linspace(0, 1, 997)[:, None]
    dense = np.concatenate([line[0] + t * (line[1] - line[0]), line[1] + t * (line[2] - line[1])])
    assert set(nearest_indices(xs, ys, dense)) <= set(req)
    assert len(nearest_indices(xs, ys, [[5.0, 0.0], [0.0, -3.0]])) == 0  # points outside the lattice: none
    truth, evaluate, _ = surface(bowl, shape)
    out = refine(shape, evaluate, SCALES, 0.05, required=req)
    ev = out["evaluated"].ravel()
    assert ev[req].all()
    for m in SCALES:
        a = out["values"][m].ravel()
        best = np.flatnonzero(a == a.min())
        i = best[ev[best]][0]
        assert ev[lattice_neighbours(i, shape)].all()
    # the true lattice minimum of the bowl is found and evaluated exactly
    assert out["values"]["loss"].min() == truth["loss"].min()


@pytest.mark.parametrize("shape", [(150, 150), (97, 150), (5, 5), (6, 41)])
def test_any_lattice_size(shape):
    truth, evaluate, _ = surface(spike, shape)
    out = refine(shape, evaluate, SCALES, 0.01)
    ev = out["evaluated"]
    assert ev.shape == shape and ev[0, 0] and ev[-1, -1] and ev[0, -1] and ev[-1, 0]
    assert np.isfinite(out["values"]["loss"]).all() and np.isfinite(out["values"]["error"]).all()
    assert log_miss(out, truth, shape).max() < 0.05
    h = coarse_spacing(shape)
    assert h & (h - 1) == 0 and h >= 2
    assert np.all(ev[np.ix_(axis_nodes(shape[0], h), axis_nodes(shape[1], h))])


def test_refinement_errors_and_determinism():
    truth, evaluate, _ = surface(bowl, (33, 33))
    with pytest.raises(LowlossError, match="tolerance must be > 0"):
        refine((33, 33), evaluate, SCALES, 0.0)
    with pytest.raises(LowlossError, match="at least 5 points"):
        refine((4, 33), evaluate, SCALES, 0.01)
    with pytest.raises(LowlossError, match="scales"):
        refine((33, 33), evaluate, {"loss": "cubic"}, 0.01)
    # a stop returns None; a second pass over the values known so far asks the same rounds
    _, ev2, calls2 = surface(spike, (65, 65))
    stops = iter([True, True, False])
    assert refine((65, 65), lambda i: ev2(i) if next(stops) else None, SCALES, 0.01, cells=4) is None
    a = refine((65, 65), ev2, SCALES, 0.01, cells=4)
    _, ev3, _ = surface(spike, (65, 65))
    b = refine((65, 65), ev3, SCALES, 0.01, cells=4)
    assert a["levels"][2:] == b["levels"][2:] and np.array_equal(a["evaluated"], b["evaluated"])
    np.testing.assert_array_equal(a["values"]["loss"], b["values"]["loss"])


# ---------------------------------------------------------------------------------------------- the command
@pytest.fixture
def one_thread():
    """Hundreds of tiny evaluations: one thread avoids OpenMP's hand-offs on a busy machine (tens of times
    faster there); the numbers do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_inputs():
    model, data, pts = tiny_plane_setup(0, n_train=100, hidden=8, scale=0.6)
    return PL.PlaneInputs(model, data, ["A", "B", "C"], pts, {"test": True})


def test_adaptive_plane_resumes_and_tiny_tol_is_the_full_plane(tmp_path, one_thread):
    inputs = _tiny_inputs()
    cfg = PL.Config(grid=11, adaptive=True, tol=0.05, coarse_cells=2, chunk_points=4, batch_size=32)
    ref = PL.compute_plane(inputs, cfg, tmp_path / "ref", quiet=True)
    z = np.load(tmp_path / "ref" / "plane.npz")
    ev = z["evaluated"]
    assert ev.shape == (11, 11) and ev.dtype == bool and 0 < ev.mean() < 1
    assert ref["adaptive"]["evaluated"] == ev.sum() == ref["timing"]["points"]
    for m in PL.METRICS:
        assert z[m].shape == (11, 11) and np.isfinite(z[m]).all()
    # the lattice points nearest to the three anchors are evaluated
    assert ev.ravel()[nearest_indices(z["x"], z["y"], z["point_coords"])].all()

    part = PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True, stop_after_chunks=3)
    assert part["finished"] is False and 0 < part["computed"] <= 12
    again = PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True, stop_after_chunks=2)
    assert again["finished"] is False and part["computed"] < again["computed"] < ev.sum()
    done = PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True)
    assert done["timing"]["resumed_points"] == again["computed"] and done["adaptive"] == ref["adaptive"]
    zr = np.load(tmp_path / "resumed" / "plane.npz")
    for k in (*PL.METRICS, "evaluated", "x", "y"):
        np.testing.assert_array_equal(zr[k], z[k])

    # one point per chunk: the engine's rounding then does not depend on which points share a chunk
    one = replace(cfg, chunk_points=1)
    full = PL.compute_plane(inputs, replace(one, adaptive=False), tmp_path / "full", quiet=True)
    tiny = PL.compute_plane(inputs, replace(one, tol=1e-12, error_tol=0.0), tmp_path / "tiny", quiet=True)
    zf, zt = np.load(tmp_path / "full" / "plane.npz"), np.load(tmp_path / "tiny" / "plane.npz")
    assert zt["evaluated"].all() and zf["evaluated"].all() and tiny["adaptive"]["fraction"] == 1.0
    for m in PL.METRICS:
        np.testing.assert_array_equal(zt[m], zf[m])
        # the adaptive plane's evaluated points are the full plane's values
        np.testing.assert_allclose(z[m][ev], zf[m][ev], rtol=1e-12, atol=1e-14)
    assert "adaptive" not in full


def test_adaptive_plane_figures_and_cli_errors(tmp_path, capsys, one_thread):
    from lowloss.cli import main

    with pytest.raises(LowlossError, match="--tol must be > 0"):
        PL.Config(tol=0).check()
    with pytest.raises(LowlossError, match="--tol must be > 0"):
        PL.Config(tol=-1.0, adaptive=True).check()
    with pytest.raises(LowlossError, match="--adaptive needs --grid >= 5"):
        PL.Config(grid=4, adaptive=True).check()
    PL.Config(grid=4).check()  # a small full grid is fine
    runs = [str(tmp_path / r) for r in "abc"]
    for r in runs:
        Path(r).mkdir()
    for args, msg in ((["--grid", "3", "--adaptive"], "--adaptive needs --grid >= 5"),
                      (["--tol", "0"], "--tol must be > 0")):
        with pytest.raises(SystemExit):
            main(["plane", *runs, "--out", str(tmp_path / "x"), *args])
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()

    from lowloss.plots.figures import draw

    inputs = _tiny_inputs()
    res = PL.compute_plane(inputs, PL.Config(grid=17, adaptive=True, tol=0.1, coarse_cells=2,
                                                  metrics=("train_loss",)),
                           tmp_path / "p", quiet=True)
    assert res["adaptive"]["fraction"] < 1
    draw("plane", res, tmp_path / "p")
    assert {p.name for p in (tmp_path / "p").glob("*.png")} == {"plane_train_loss.png", "plane_evaluated.png"}
    assert f"{res['adaptive']['evaluated']} of 289 points evaluated (" in PL.summary(res)
