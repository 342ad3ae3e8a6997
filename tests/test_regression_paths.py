"""Paths between regression modes: the engine's regression metrics, connect and plane on regression data, the
functions along the curve and their spread, the figure, the claim, and the one-line errors of
classification-only commands."""

import json
import shutil

import numpy as np
import pytest
import torch

import lowloss
from lowloss import params as P
from lowloss.claims import claim_regression_paths
from lowloss.engine.evaluate import evaluate_vectors, predict_outputs, predict_probs
from lowloss.methods.animate import curve_plane
from lowloss.methods.connect import AWAY_FROM_DATA, function_spread, load_curve
from lowloss.methods.regression import ModeConfig, train_mode
from lowloss.rundir import load_npz, load_run
from lowloss.utils import LowlossError, torch_threads

CURVE = dict(epochs=6, lr=0.05, wd=1e-4, batch_size=40, points=9, marks=3, frame_grid=7, device="cpu")


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    root = tmp_path_factory.mktemp("regmodes")
    with torch_threads(1):  # tiny networks: one thread is fastest
        return [train_mode(ModeConfig(data="regression1d", widths="16,16", epochs=100, lr=0.02, wd=1e-4, seed=s,
                                      data_seed=0, device="cpu"), root / f"mode_{s}", quiet=True) for s in (0, 1)]


@pytest.fixture(scope="module")
def curve_run(modes, tmp_path_factory):
    out = tmp_path_factory.mktemp("regcurve") / "curve"
    with torch_threads(1):
        info = lowloss.run("connect", inputs=[str(m) for m in modes], out=out, quiet=True, **CURVE)
    return out, info


def test_engine_regression_loss_is_the_mse_and_error_its_root(modes):
    run = load_run(modes[0], device="cpu")
    vecs = torch.stack([run.vector, run.vector * 0.9])
    r = evaluate_vectors(run.model, vecs, run.data, return_probs=("test",))
    for k, v in enumerate(vecs):
        for split in ("train", "test"):
            s = getattr(run.data, split)
            out = P.functional_forward(run.model, v, s.x)
            mse = torch.nn.functional.mse_loss(out.double(), s.y.double())
            assert float(r[f"{split}_loss"][k]) == pytest.approx(float(mse), rel=1e-6)
            assert float(r[f"{split}_error"][k]) == pytest.approx(float(mse.sqrt()), rel=1e-6)
        assert torch.allclose(r["outputs"]["test"][k], P.functional_forward(run.model, v, run.data.test.x), atol=1e-6)
    assert "probs" not in r or not r["probs"]
    point = lowloss.engine.evaluate.evaluate_vector(run.model, run.vector, run.data)
    assert point["train"]["loss"] == pytest.approx(float(r["train_loss"][0]), rel=1e-6)
    assert np.isnan(point["train"]["accuracy"])
    x = torch.linspace(-3, 3, 11).reshape(-1, 1)
    f = predict_outputs(run.model, vecs, x)
    assert f.shape == (2, 11, 1)
    assert torch.allclose(f[1], P.functional_forward(run.model, vecs[1], x), atol=1e-6)
    with pytest.raises(LowlossError, match="regression targets"):
        predict_probs(run.model, run.vector, run.data.test)


def test_connect_on_regression_data(curve_run, modes):
    out, info = curve_run
    assert info["task"] == "regression"
    assert set(info["curve"]) == {"train_loss", "train_error", "test_loss", "test_error"}
    assert "endpoint_ensemble" not in info and "ensemble_test_error" not in info["line"]
    # the endpoints of both paths are the modes themselves: their MSE as trained
    for i, m in ((0, modes[0]), (-1, modes[1])):
        run = load_run(m, device="cpu")
        with torch.no_grad():
            mse = float(torch.nn.functional.mse_loss(run.model(run.data.train.x), run.data.train.y))
        assert info["curve"]["train_loss"][i] == pytest.approx(mse, rel=1e-5)
        assert info["line"]["train_loss"][i] == pytest.approx(mse, rel=1e-5)
    assert info["summary"]["curve"]["max_train_loss"] == max(info["curve"]["train_loss"])
    # the functions at the marked t and their spread, recomputed from the saved arrays
    fn = load_npz(out / "functions.npz")
    assert fn["curve"].shape == (3, 400) and list(fn["t"]) == [0.0, 0.5, 1.0]
    dist = np.abs(fn["x"][:, None] - fn["train_x"][None]).min(1)
    assert np.array_equal(fn["away"], dist > AWAY_FROM_DATA)
    assert info["functions"]["spread"]["curve"] == function_spread(fn["curve"], fn["away"])
    curve, run = load_curve(out, device="cpu")
    mid = curve.points(torch.tensor([[0.5]], dtype=torch.float64)).detach()[0]
    x = torch.from_numpy(fn["x"]).float().reshape(-1, 1)
    assert np.allclose(fn["curve"][1], P.functional_forward(run.model, mid, x).reshape(-1).numpy(), atol=1e-5)
    assert np.allclose(fn["curve"][0], fn["line"][0]) and np.allclose(fn["curve"][-1], fn["line"][-1])
    # the plane of the curve: the marked points lie on the projected curve; a grid value is the engine's
    pl = load_npz(out / "path_plane.npz")
    assert pl["train_loss"].shape == (7, 7)
    plane = curve_plane(curve.controls().detach())
    w = plane.points(torch.tensor([[pl["x"][2], pl["y"][5]]], dtype=torch.float64))
    ref = evaluate_vectors(run.model, w, run.data, splits=("train",))["train_loss"][0]
    assert pl["train_loss"][5, 2] == pytest.approx(float(ref), rel=1e-6)  # float32 sums in another order
    assert np.allclose(pl["mark_coords"][1], pl["curve_coords"][4], atol=1e-6)  # t = 0.5 of 9 points
    assert not (out / "path_plane_chunks").exists()
    assert (out / "curve.png").stat().st_size > 0 and (out / "regression_path.png").stat().st_size > 0


def test_plane_through_a_regression_curve(curve_run, tmp_path):
    out, _ = curve_run
    with torch_threads(1):
        info = lowloss.run("plane", out=tmp_path / "pl", curve=str(out), grid=4, device="cpu", quiet=True)
    z = load_npz(tmp_path / "pl" / "plane.npz")
    assert np.allclose(z["train_error"], np.sqrt(z["train_loss"]))  # regression error = RMSE
    assert info["finished"] and np.isfinite(z["test_loss"]).all()


def test_regression_claim_measures_the_run(curve_run, tmp_path):
    out, info = curve_run
    study = tmp_path / "study"
    shutil.copytree(out, study / "regression_paths")
    (c,) = claim_regression_paths(study, [])
    sp = info["functions"]["spread"]["curve"]
    assert c.measured["std_away_from_data"] == [sp["away_from_data"]]
    assert c.measured["comparisons"]["spread"]["diffs"] == [sp["away_from_data"] - 2 * sp["near_data"]]
    ends = max(e["train_loss"] for e in info["endpoints"].values())
    assert c.measured["comparisons"]["train_loss"]["diffs"] == [2 * ends - info["summary"]["curve"]["max_train_loss"]]
    assert c.held in ("held", "within noise", "not held")
    (empty,) = claim_regression_paths(tmp_path / "nothing", [])
    assert empty.held is None


def test_classification_only_commands_refuse_regression_runs(modes, tmp_path):
    for name, inputs in (("eval", [modes[0]]), ("ensemble", modes)):
        with pytest.raises(LowlossError) as e:
            lowloss.run(name, inputs=[str(m) for m in inputs], out=tmp_path / name, quiet=True, device="cpu")
        assert "\n" not in str(e.value) and "regression" in str(e.value)
        assert not (tmp_path / name).exists()


def test_regression_run_json_is_plain_json(curve_run):
    out, _ = curve_run
    text = (out / "run.json").read_text()
    assert "NaN" not in text
    json.loads(text)
