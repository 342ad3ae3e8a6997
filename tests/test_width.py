"""Optimum width: the search on analytic losses, the line's ends, the directions, the command's bad inputs."""

import math

import numpy as np
import pytest
import torch

from lowloss.api import run
from lowloss.methods import width as W
from lowloss.params import ParamLayout, flatten
from lowloss.utils import LowlossError


def _quadratic(curv, base):
    curv, base = np.asarray(curv, float), np.asarray(base, float)
    calls = []

    def loss_at(rays, s):
        calls.append(len(rays))
        return base[rays] + 0.5 * curv[rays] * np.asarray(s) ** 2

    return loss_at, calls


def test_width_of_a_quadratic_is_its_closed_form():
    curv, base, rise = np.array([0.5, 2.0, 8.0, 0.02]), np.array([0.1, 0.3, 0.0, 1.0]), 0.25
    loss_at, calls = _quadratic(curv, base)
    widths, profile = W.rise_distances(loss_at, base, rise, np.linspace(0, 2.0, 5), refine=45)
    np.testing.assert_allclose(widths, np.sqrt(2 * rise / curv), rtol=1e-10)  # the last one found by doubling
    np.testing.assert_allclose(profile[:, 0], base)  # distance 0 is the start, not re-evaluated
    np.testing.assert_allclose(profile[1], base[1] + curv[1] * np.linspace(0, 2, 5) ** 2 / 2)
    assert sum(calls[:1]) == 4 * 4  # the profile: every ray at the four distances > 0, in one call
    # a flat ray never rises: NaN, left out of the mean
    flat, _ = _quadratic([0.0, 1.0], [0.0, 0.0])
    w2, _ = W.rise_distances(flat, [0.0, 0.0], 0.5, np.linspace(0, 1, 3), refine=40)
    assert math.isnan(w2[0]) and w2[1] == pytest.approx(1.0, rel=1e-10)
    st = W.mean_se(w2)
    assert st["censored"] == 1 and st["mean"] == pytest.approx(1.0) and st["per_direction"][0] is None
    # a linear rise is exact after any number of bisections (the last bracket is interpolated)
    w3, _ = W.rise_distances(lambda r, s: 3.0 * np.asarray(s), [0.0], 0.9, np.linspace(0, 1, 4), refine=0)
    assert w3[0] == pytest.approx(0.3, rel=1e-12)


def test_pilot_and_line_grid():
    loss_at, _ = _quadratic([2.0, 0.5], [0.0, 0.0])
    # widths 0.316 and 0.632: the first distance scale * 2**k above them is 0.5 and 1.0, doubled and rounded up
    assert W.pilot_distance(loss_at, [0.0, 0.0], 0.1, 1.0) == 2.0
    assert W.nice_ceil(0.31) == 0.5 and W.nice_ceil(2.0) == 2.0 and W.nice_ceil(7) == 10
    t = W.line_t(1.0, 7)
    assert t[0] == -1.0 and t[-1] == 2.0 and 0.0 in t and 1.0 in t and np.all(np.diff(t) > 0)
    assert {0.0, 1.0} <= set(W.line_t(0.3, 4))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("width")
    common = dict(model="mlp", model_options={"widths": "16"}, seed=0, quiet=True, device="cpu")
    run("train", out=d / "sgd", epochs=2, **common)
    run("swa", inputs=[str(d / "sgd")], out=d / "swa", epochs=1, lr=0.05, every_epochs=0.5, quiet=True, device="cpu")
    run("train", out=d / "other", epochs=1, **{**common, "model_options": {"widths": "8"}})
    return d


def test_width_line_ends_are_the_runs(runs, tmp_path):
    from lowloss.rundir import load_run, read_result

    res = run("width", inputs=[str(runs / "sgd"), str(runs / "swa")], out=tmp_path / "w", directions=2, ray_points=3,
              refine=2, line_points=5, max_distance=2.0, quiet=True, device="cpu")
    wd = 5e-4  # the train run's, inherited by the SWA run
    assert res["wd"] == wd
    for key, d in (("sgd", runs / "sgd"), ("swa", runs / "swa")):
        own = read_result(d)["final"]["train"]
        test = read_result(d)["final"]["test"]
        p = res["points"][key]
        w = load_run(d, device="cpu").vector.double()
        assert p["l2"] == pytest.approx(wd / 2 * float(w @ w), rel=1e-12)
        assert p["train_nll"] == pytest.approx(own["loss"], rel=1e-5)
        assert p["train_loss"] == pytest.approx(own["loss"] + wd / 2 * float(w @ w), rel=1e-5)
        assert p["test_error"] == pytest.approx(1 - test["accuracy"], abs=1e-12)
    z = W.load(tmp_path / "w")
    assert z["ray_loss_sgd"].shape == (2, 3) and z["width_swa"].shape == (2,)
    assert z["ray_loss_sgd"][:, 0] == pytest.approx([res["points"]["sgd"]["train_loss"]] * 2)
    i = int(np.flatnonzero(z["line_t"] == 1.0)[0])
    assert z["line_distance"][i] == pytest.approx(res["distance"])
    assert (tmp_path / "w" / "width_line.png").exists() and (tmp_path / "w" / "width_rays.png").exists()
    assert "SWA" in W.summary(res)


def test_directions_unit_or_filter_normalised(runs):
    from lowloss.rundir import load_runs

    a, b = load_runs([runs / "sgd", runs / "swa"], device="cpu")
    layout = ParamLayout.of(a.model)
    unit = W._directions(W.Config(directions=3, seed=5), [a.vector, b.vector], layout)
    torch.testing.assert_close(unit.double().norm(dim=-1), torch.ones(2, 3, dtype=torch.float64), rtol=1e-6, atol=0)
    assert torch.equal(unit[0], unit[1])  # the same direction from both points
    fn = W._directions(W.Config(directions=3, seed=5, filter_norm=True), [a.vector, b.vector], layout)
    for k, r in enumerate((a, b)):
        first = layout.unflatten(fn[k, 0])["net.1.weight"]  # the first layer's neurons, at each point
        torch.testing.assert_close(first.norm(dim=1), layout.unflatten(flatten(r.model))["net.1.weight"].norm(dim=1),
                                   rtol=1e-5, atol=0)
        assert torch.count_nonzero(layout.unflatten(fn[k, 0])["net.1.bias"]) == 0
    again = W._directions(W.Config(directions=3, seed=5), [a.vector, b.vector], layout)
    assert torch.equal(unit, again)


def test_width_bad_inputs(runs, tmp_path):
    sgd, swa, other = (str(runs / n) for n in ("sgd", "swa", "other"))
    with pytest.raises(LowlossError, match="not a `lowloss swa` run"):
        run("width", inputs=[sgd, other], out=tmp_path / "x", quiet=True)
    with pytest.raises(LowlossError, match="differ in architecture"):
        run("width", inputs=[other, swa], out=tmp_path / "x", quiet=True)
    with pytest.raises(LowlossError, match="same run"):
        run("width", inputs=[swa, swa], out=tmp_path / "x", quiet=True)
    with pytest.raises(LowlossError, match="--directions must be >= 1"):
        run("width", inputs=[sgd, swa], out=tmp_path / "x", directions=0, quiet=True)
    with pytest.raises(LowlossError, match="--rise must be positive"):
        run("width", inputs=[sgd, swa], out=tmp_path / "x", rise=0.0, quiet=True)
    with pytest.raises(LowlossError, match="is not a finished"):
        run("width", inputs=[sgd, str(tmp_path / "missing")], out=tmp_path / "x", quiet=True)
    assert not (tmp_path / "x").exists()


def test_width_refuses_a_regression_run(tmp_path):
    reg = tmp_path / "reg"
    run("train", out=reg, data="regression1d", model="mlp", model_options={"widths": "8"}, epochs=1, quiet=True,
        device="cpu")
    swa = tmp_path / "regswa"
    run("swa", inputs=[str(reg)], out=swa, epochs=1, quiet=True, device="cpu")
    with pytest.raises(LowlossError, match="regression run"):
        run("width", inputs=[str(reg), str(swa)], out=tmp_path / "x", quiet=True)
    assert not (tmp_path / "x").exists()


def test_width_resumes_from_its_finished_line(runs, tmp_path, monkeypatch):
    ins = [str(runs / "sgd"), str(runs / "swa")]
    kw = dict(directions=1, ray_points=2, refine=0, line_points=4, max_distance=1.0, quiet=True, device="cpu")
    fresh = run("width", inputs=ins, out=tmp_path / "fresh", **kw)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(W, "rise_distances", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("width", inputs=ins, out=tmp_path / "w", **kw)
    assert (tmp_path / "w" / W.LINE_FILE).exists() and not (tmp_path / "w" / "run.json").exists()
    monkeypatch.undo()
    res = run("width", inputs=ins, out=tmp_path / "w", resume=True, **kw)
    assert fresh["timing"]["evaluations"] - res["timing"]["evaluations"] == 4  # the line's four points reused
    assert res["points"] == fresh["points"] and res["width"]["sgd"] == fresh["width"]["sgd"]
    assert not (tmp_path / "w" / W.LINE_FILE).exists()
