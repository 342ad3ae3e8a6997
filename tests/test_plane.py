"""Planes: Gram-Schmidt geometry, grid placement, projections, resumable grids, the CLI end to end."""

import json

import numpy as np
import pytest
import torch

from conftest import tiny_plane_setup
from lowloss.engine.evaluate import evaluate_vectors
from lowloss.methods import plane as PL
from lowloss.plots.figures import draw
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
    return tiny_plane_setup(seed)


def test_plane_grid_corner_is_the_anchor_and_resume_matches(tmp_path):
    model, data, pts = _tiny_setup()
    # choose c so that a = (0, 0) is the lower-left grid corner when the margin is 0
    a, b, c = pts
    c = c + (abs(((c - a) @ (b - a)).item()) / (b - a).norm() ** 2 + 0.1) * (b - a)
    inputs = PL.PlaneInputs(model, data, ["A", "B", "C"], [a, b, c], {"test": True})
    cfg = PL.Config(grid=6, margin=0.0, min_aspect=0.0, chunk_points=7, batch_size=32)
    full = PL.compute_plane(inputs, cfg, tmp_path / "full", quiet=True)
    assert full["method"] == "plane" and full == json.loads((tmp_path / "full" / "run.json").read_text())
    z = np.load(tmp_path / "full" / "plane.npz")
    assert z["x"][0] == pytest.approx(0, abs=1e-12) and z["y"][0] == pytest.approx(0, abs=1e-12)
    ref = evaluate_vectors(model, a[None], data, batch_size=32)
    for m in PL.METRICS:
        assert z[m].shape == (6, 6)
        assert z[m][0, 0] == pytest.approx(ref[m][0].item(), rel=1e-9, abs=1e-12)
        assert full["points"]["A"][m] == pytest.approx(ref[m][0].item(), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(z["point_coords"], Plane.through(a, b, c).project(torch.stack([a, b, c])).numpy())
    loaded = PL.load(tmp_path / "full")
    np.testing.assert_array_equal(loaded["train_loss"], z["train_loss"])
    torch.testing.assert_close(loaded["basis"]["origin"], a, rtol=0, atol=0)
    # other chunk boundaries give the same arrays
    other = PL.compute_plane(inputs, cfg, tmp_path / "chunks5", quiet=True, chunk_points=5)
    for m in PL.METRICS:
        np.testing.assert_allclose(np.load(tmp_path / "chunks5" / "plane.npz")[m], z[m], rtol=1e-12, atol=1e-14)
    assert other["timing"]["points"] == 36

    # interrupted after two chunks, then resumed: identical arrays
    part = PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True, stop_after_chunks=2)
    assert part == {"finished": False, "computed": 14, "total": 36}
    assert len(list((tmp_path / "resumed" / "chunks").glob("c_*.npz"))) == 2
    assert not (tmp_path / "resumed" / "run.json").exists() and not (tmp_path / "resumed" / ".lock").exists()
    with pytest.raises(LowlossError, match="different config"):
        PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True, grid=7)
    with pytest.raises(LowlossError, match="--resume"):
        PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True, resume=False)
    moved = PL.PlaneInputs(model, data, ["A", "B", "C"], [a, b, c + 0.5 * (b - a)], {"test": True})
    with pytest.raises(LowlossError, match="through other points"):
        PL.compute_plane(moved, cfg, tmp_path / "resumed", quiet=True)
    info = PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True)
    assert info["timing"]["resumed_points"] == 14 and info["finished"]
    r = np.load(tmp_path / "resumed" / "plane.npz")
    for m in PL.METRICS:
        np.testing.assert_allclose(r[m], z[m], rtol=1e-12, atol=1e-14)
    assert not (tmp_path / "resumed" / "chunks").exists()
    assert PL.compute_plane(inputs, cfg, tmp_path / "resumed", quiet=True) == info  # finished: not redone
    assert "6x6 plane" in PL.summary(info) and "A at (0.000, 0.000)" in PL.summary(info)


def test_config_checks():
    for kw, msg in [(dict(metrics="train_loss,nll"), "unknown --metrics"), (dict(grid=1), "--grid"),
                    (dict(simplex="s"), "--simplex needs --face"), (dict(face=(0, 1, 2)), "--face only applies"),
                    (dict(simplex="s", face=(0, 1, 1)), "three different"), (dict(face=("0", "x", "2")), "integer"),
                    (dict(curve="c", simplex="s", face=(0, 1, 2)), "not both"), (dict(memory_budget=0), "MiB")]:
        with pytest.raises(LowlossError, match=msg):
            PL.Config(**kw).check()
    cfg = PL.Config(metrics="test_loss, test_error", simplex="s", face=("0", "1", "2"))
    cfg.check()
    assert cfg.metrics == ("test_loss", "test_error") and cfg.face == (0, 1, 2)
    for inputs, config in [(["a", "b"], PL.Config()), ([], PL.Config()), (["a", "b", "c"], PL.Config(curve="c"))]:
        with pytest.raises(LowlossError, match="three"):
            PL.check_inputs(config, inputs)
    PL.check_inputs(PL.Config(curve="c"), [])


def test_simplex_overlay_and_curve_coefficients(tmp_path):
    model, data, (a, b, c) = _tiny_setup()
    t = torch.linspace(0, 1, 61, dtype=torch.float64)
    coeff = PL.curve_coefficients("bezier", t, 3)
    torch.testing.assert_close(coeff[:, 1], 2 * t * (1 - t))
    torch.testing.assert_close(PL.curve_coefficients("line", t, 2), torch.stack([1 - t, t], 1), rtol=0, atol=0)
    # polychain: the middle point of a 3-point chain is the bend itself
    torch.testing.assert_close(PL.curve_coefficients("polychain", torch.tensor([0.5], dtype=torch.float64), 3),
                               torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))

    vertices = torch.stack([a, b, c, a + b - c])
    simplexes = [[0, 1, 2], [1, 2, 3]]
    assert PL.simplex_edges(simplexes) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    inputs = PL.PlaneInputs(model, data, ["v0", "v1", "v2"], [a, b, c], {},
                            simplex={"vertices": vertices, "labels": ["v0", "v1", "v2", "v3"],
                                     "edges": PL.simplex_edges(simplexes), "simplexes": simplexes})
    info = PL.compute_plane(inputs, PL.Config(grid=3, metrics=("test_loss",)), tmp_path / "sp", quiet=True)
    z = np.load(tmp_path / "sp" / "plane.npz")
    assert z["simplex_coords"].shape == (4, 2) and z["simplex_distance"].max() < 1e-10
    assert set(z.files) >= {"x", "y", "test_loss", "origin_norm", "basis_norms"} and "train_loss" not in z.files
    assert [p.name for p in draw("plane", info, tmp_path / "sp")] == ["plane_test_loss.png"]


def test_cli_plane_through_three_runs_and_a_curve(tmp_path, capsys):
    from lowloss.cli import main
    from lowloss.methods.connect import save_curve
    from lowloss.methods.train import Config as TrainConfig
    from lowloss.methods.train import train as train_mode
    from lowloss.rundir import load_runs
    from lowloss.subspaces.curves import Bezier

    runs = []
    for s in range(3):
        out = tmp_path / f"m{s}"
        train_mode(TrainConfig(model="mlp", model_options={"widths": "8"}, epochs=1, seed=s, device="cpu"), out,
                   quiet=True)
        runs.append(str(out))
    out = tmp_path / "plane"
    main(["plane", *runs, "--grid", "4", "--out", str(out), "--metrics", "test_loss,test_error"])
    assert capsys.readouterr().out.startswith(f"{out}: 4x4 plane in ")
    info = json.loads((out / "run.json").read_text())
    assert info["finished"] and info["timing"]["points"] == 16 and info["method"] == "plane"
    assert info["config"]["metrics"] == ["test_loss", "test_error"] and len(info["config"]["inputs"]) == 3
    assert (out / "plane_test_loss.png").stat().st_size > 1000 and (out / "plane_test_error.png").exists()
    assert not (out / "plane_train_loss.png").exists()
    for i, (bad, msg) in enumerate([([runs[0], runs[1]], "exactly three runs"),
                                    ([*runs, "--curve", str(tmp_path)], "exactly one of"),
                                    (["--face", "0", "1", "2"], "--face only applies")]):
        with pytest.raises(SystemExit) as e:
            main(["plane", *bad, "--out", str(tmp_path / f"bad{i}"), "-q"])
        assert e.value.code == 2 and msg in capsys.readouterr().err

    # a quadratic Bezier whose bend is the third run lies in the plane through the three runs
    ra, rb, rc = load_runs(runs, device="cpu")
    curve_dir = tmp_path / "curve"
    save_curve(curve_dir / "curve.safetensors", Bezier([ra.vector, rc.vector, rb.vector], [False, True, False]),
               [str(ra.path.resolve()), str(rb.path.resolve())])
    pc = tmp_path / "plane-curve"
    main(["plane", "--curve", str(curve_dir), "--grid", "3", "--curve-points", "11", "--metrics", "train_loss",
          "--out", str(pc), "-q"])
    info = json.loads((pc / "run.json").read_text())
    assert info["labels"] == ["m0", "m1", "bend"] and info["sources"]["curve_kind"] == "bezier"
    assert info["curve"]["points"] == 11 and info["curve"]["max_distance_from_plane"] < 1e-4
    z = np.load(pc / "plane.npz")
    np.testing.assert_allclose(z["curve_coords"][[0, -1]], z["point_coords"][:2], atol=1e-4)
    assert (pc / "plane_train_loss.png").exists()


def test_plane_task_coordinates_match_the_row_major_grid():
    from lowloss.methods.plane_grid import PlaneTask

    xs, ys = np.linspace(-1, 2, 5), np.linspace(0, 1, 3)
    task = PlaneTask(None, None, None, xs, ys, ("test_loss",), ("test",))
    idx = np.array([0, 4, 5, 7, 14])
    np.testing.assert_array_equal(task.coordinates(idx).numpy(), grid_coordinates(xs, ys)[idx])
