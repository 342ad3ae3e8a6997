"""Planes: Gram-Schmidt geometry, grid placement, projections, resumable grids, the CLI end to end."""

import json

import numpy as np
import pytest
import torch

from lowloss.data import Dataset, TensorSplit
from lowloss.engine.evaluate import evaluate_vectors
from lowloss.methods import plane as PL
from lowloss.subspaces.plane import Plane, grid_axes, grid_coordinates
from lowloss.utils import LowlossError


def _points(p=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p, generator=g, dtype=torch.float64) for _ in range(3)]


def test_gram_schmidt_basis_and_recorded_coordinates():
    a, b, c = _points()
    pl = Plane.through(a, b, c)
    assert pl.u.norm().item() == pytest.approx(1, abs=1e-14)
    assert pl.v.norm().item() == pytest.approx(1, abs=1e-14)
    assert abs((pl.u @ pl.v).item()) < 1e-14
    # (0, 0) is the origin, exactly (computed from the origin, not by walking)
    assert torch.equal(pl.points(torch.zeros(1, 2))[0], pl.origin)
    xy = pl.project(torch.stack([a, b, c]))
    cu = ((c - a) @ pl.u).item()
    cv = ((c - a) - cu * pl.u).norm().item()
    expected = torch.tensor([[0, 0], [(b - a).norm().item(), 0], [cu, cv]], dtype=torch.float64)
    torch.testing.assert_close(xy, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(pl.points(xy), torch.stack([a, b, c]), rtol=0, atol=1e-12)
    assert pl.distance(torch.stack([a, b, c])).max().item() < 1e-12
    # a point off the plane: projection is orthogonal
    w = a + 0.3 * (b - a) + torch.randn(50, dtype=torch.float64)
    r = w - pl.points(pl.project(w))
    assert abs((r @ pl.u).item()) < 1e-12 and abs((r @ pl.v).item()) < 1e-12


def test_centroid_origin_and_degenerate_planes():
    a, b, c = _points()
    pl = Plane.through(a, b, c, origin="centroid")
    torch.testing.assert_close(pl.project(torch.stack([a, b, c])).mean(0), torch.zeros(2, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    with pytest.raises(LowlossError, match="collinear"):
        Plane.through(a, b, a + 2.5 * (b - a))
    with pytest.raises(LowlossError, match="coincide"):
        Plane.through(a, a.clone(), c)


def test_grid_axes_margins_and_row_major_order():
    xs, ys = grid_axes([[0, 0], [10, 0], [2, 5]], 11, 0.2)
    assert xs[0] == pytest.approx(-2) and xs[-1] == pytest.approx(12)
    assert ys[0] == pytest.approx(-1) and ys[-1] == pytest.approx(6)
    xs2, ys2 = grid_axes([[0, 0], [10, 0], [5, 1]], 5, 0.0, min_aspect=0.5)
    assert (xs2[0], xs2[-1]) == (0, 10) and ys2[-1] - ys2[0] == pytest.approx(5) and ys2.mean() == pytest.approx(0.5)
    c = grid_coordinates(xs, ys, 10, 13)
    np.testing.assert_allclose(c, [[xs[10], ys[0]], [xs[0], ys[1]], [xs[1], ys[1]]])


def _tiny_setup(seed=0):
    """Float64 tiny BN network on a slice of digits; three nearby points."""
    from lowloss.data import load_dataset

    d = load_dataset("digits")
    data = Dataset("digits-small", TensorSplit(d.train.x[:120].double(), d.train.y[:120]),
                   TensorSplit(d.test.x[:40].double(), d.test.y[:40]), d.input_shape, 10)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.BatchNorm1d(12),
                                torch.nn.ReLU(), torch.nn.Linear(12, 10)).double()
    from lowloss.params import flatten

    w = flatten(model)
    g = torch.Generator().manual_seed(1)
    pts = [w, w + 0.5 * torch.randn(w.numel(), generator=g, dtype=w.dtype),
           w + 0.5 * torch.randn(w.numel(), generator=g, dtype=w.dtype)]
    return model, data, pts


def test_plane_grid_corner_is_the_anchor_and_resume_matches(tmp_path):
    model, data, pts = _tiny_setup()
    # choose c so that a = (0, 0) is the lower-left grid corner when the margin is 0
    a, b, c = pts
    c = c + (abs(((c - a) @ (b - a)).item()) / (b - a).norm() ** 2 + 0.1) * (b - a)
    inputs = PL.PlaneInputs(model, data, ["A", "B", "C"], [a, b, c], {"test": True})
    cfg = PL.PlaneConfig(grid=6, margin=0.0, min_aspect=0.0, metrics=PL.METRICS, chunk_points=7, batch_size=32)
    full = PL.compute_plane(inputs, cfg, tmp_path / "full", quiet=True)
    z = np.load(tmp_path / "full" / "plane.npz")
    assert z["x"][0] == pytest.approx(0, abs=1e-12) and z["y"][0] == pytest.approx(0, abs=1e-12)
    ref = evaluate_vectors(model, a[None], data, batch_size=32)
    for m in PL.METRICS:
        assert z[m].shape == (6, 6)
        assert z[m][0, 0] == pytest.approx(ref[m][0].item(), rel=1e-9, abs=1e-12)
        assert full["points"]["A"][m] == pytest.approx(ref[m][0].item(), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(z["point_coords"], Plane.through(a, b, c).project(torch.stack([a, b, c])).numpy())

    # interrupted after two chunks, then resumed with another chunk size: identical arrays
    part = PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True, stop_after_chunks=2)
    assert part == {"finished": False, "computed": 14, "total": 36}
    assert len(list((tmp_path / "resumed" / "chunks").glob("c_*.npz"))) == 2
    cfg2 = PL.PlaneConfig(**{**cfg.__dict__, "chunk_points": 5})
    with pytest.raises(LowlossError, match="other settings"):
        PL.compute_plane(inputs, PL.PlaneConfig(**{**cfg.__dict__, "grid": 7}), tmp_path / "resumed", quiet=True)
    info = PL.compute_plane(inputs, cfg2, tmp_path / "resumed", quiet=True)
    assert info["timing"]["resumed_points"] == 14
    r = np.load(tmp_path / "resumed" / "plane.npz")
    for m in PL.METRICS:
        np.testing.assert_allclose(r[m], z[m], rtol=1e-12, atol=1e-14)
    assert not (tmp_path / "resumed" / "chunks").exists()


def test_curve_and_simplex_projection(tmp_path):
    from lowloss.rundir import save_tensors as save_state

    model, data, (a, b, c) = _tiny_setup()
    # a quadratic Bezier with its bend at c lies in the plane through a, b, c
    save_state(tmp_path / "curve.safetensors", {"control_0": a, "control_1": c, "control_2": b},
               {"curve": "bezier", "num_bends": "1", "runs": json.dumps(["A", "B"])})
    cur = PL.load_curve(tmp_path)
    assert cur["kind"] == "bezier" and cur["controls"].shape == (3, a.numel())
    t = torch.linspace(0, 1, 61, dtype=torch.float64)
    coeff = PL.curve_coefficients("bezier", t, 3)
    torch.testing.assert_close(coeff[:, 1], 2 * t * (1 - t))
    pts = coeff @ torch.stack([a, c, b])
    pl = Plane.through(a, b, c)
    assert pl.distance(pts).max().item() < 1e-10
    xy = pl.project(pts)
    torch.testing.assert_close(xy[0], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(xy[-1], pl.project(b), rtol=0, atol=1e-12)
    # polychain: the middle point of a 3-point chain is the bend itself
    torch.testing.assert_close(PL.curve_coefficients("polychain", torch.tensor([0.5], dtype=torch.float64), 3),
                               torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))

    save_state(tmp_path / "simplex.safetensors", {"vertex_0": a, "vertex_1": b, "vertex_2": c, "vertex_3": a + b - c},
               {"simplexes": json.dumps([[0, 1, 2], [1, 2, 3]]), "base_runs": json.dumps(["x"])})
    sx = PL.load_simplex(tmp_path)
    assert PL.simplex_edges(sx["simplexes"]) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    inputs = PL.PlaneInputs(model, data, ["v0", "v1", "v2"], [a, b, c], {},
                            simplex={"vertices": sx["vertices"].double(), "labels": ["v0", "v1", "v2", "v3"],
                                     "edges": PL.simplex_edges(sx["simplexes"]), "simplexes": sx["simplexes"]})
    PL.compute_plane(inputs, PL.PlaneConfig(grid=3, metrics=("test_loss",)), tmp_path / "sp", quiet=True)
    z = np.load(tmp_path / "sp" / "plane.npz")
    assert z["simplex_coords"].shape == (4, 2) and z["simplex_distance"].max() < 1e-10
    assert set(z.files) >= {"x", "y", "test_loss", "origin_norm", "basis_norms"} and "train_loss" not in z.files


def test_cli_plane_through_three_runs(tmp_path):
    from lowloss.cli import main
    from lowloss.methods.train import Config as TrainConfig
    from lowloss.methods.train import train as train_mode

    runs = []
    for s in range(3):
        out = tmp_path / f"m{s}"
        train_mode(TrainConfig(model="mlp", model_options={"widths": "8"}, epochs=1, seed=s, device="cpu"), out,
                   quiet=True)
        runs.append(str(out))
    out = tmp_path / "plane"
    main(["plane", *runs, "--grid", "4", "--out", str(out), "-q", "--metrics", "test_loss,test_error"])
    info = json.loads((out / "plane.json").read_text())
    assert info["finished"] and info["timing"]["points"] == 16
    assert (out / "plane_test_loss.png").stat().st_size > 1000 and (out / "plane_test_error.png").exists()
    with pytest.raises(SystemExit) as e:
        main(["plane", runs[0], runs[1], "--out", str(tmp_path / "bad"), "-q"])
    assert e.value.code == 2
