"""Calibration (predictor level), the shift benchmark's layout and cache, regression scores."""

import json
import math

import numpy as np
import pytest
import torch

from lowloss import metrics as M
from lowloss.data import Dataset, TensorSplit
from lowloss.methods import calibrate as CAL
from lowloss.methods.predictor import Predictor
from lowloss.params import flatten
from lowloss.utils import LowlossError


def _toy(n_train=200, n_test=240, d=6, k=3, seed=0):
    """Gaussian blobs with overlap (so a linear model makes some mistakes), and a linear model."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 1.2

    def draw(n):
        y = torch.arange(n) % k
        return centres[y] + torch.randn(n, d, generator=g), y

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    data = Dataset("toy", TensorSplit(xtr, ytr), TensorSplit(xte, yte), (d,), k)
    model = torch.nn.Linear(d, k)
    base = flatten(model).detach()
    # members: least-squares-ish fits scaled up (over-confident) plus noise
    onehot = torch.nn.functional.one_hot(ytr, k).float()
    w = torch.linalg.lstsq(torch.cat([xtr, torch.ones(n_train, 1)], 1), onehot * 2 - 1).solution  # [d+1, k]
    vec = torch.cat([w[:d].T.reshape(-1), w[d]]) * 6.0
    assert vec.numel() == base.numel()
    members = [(vec + 0.3 * torch.randn(vec.shape, generator=g), None) for _ in range(3)]
    return model, data, members


@pytest.mark.parametrize("n_members", [1, 3])
def test_temperature_scaling_of_predictors_keeps_accuracy_and_lowers_fit_nll(n_members):
    model, data, members = _toy()
    pred = Predictor(model, data, fixed=members[:n_members])
    plan = CAL.calibration_plan(data)
    res = CAL.calibrate_predictor(pred, plan)
    assert res["members"] == n_members and res["note"] is None
    assert res["temperature"] != pytest.approx(1.0, abs=1e-3)  # over-confident members: T really moves
    assert res["before"]["accuracy"] == res["after"]["accuracy"]
    assert res["fit_data"]["before"]["accuracy"] == res["fit_data"]["after"]["accuracy"]
    assert res["fit_data"]["after"]["nll"] <= res["fit_data"]["before"]["nll"] + 1e-12
    # the fitted T is the minimiser on the fitting data: a brute-force scan finds nothing better
    lc, yc = pred.member_logits(plan.calib)
    lp = CAL.log_mean_probs(lc)
    scan = min(M.nll(CAL.scaled_probs(lp, t), yc) for t in np.exp(np.linspace(-3, 3, 601)))
    assert res["fit_data"]["after"]["nll"] <= scan + 1e-6


def test_log_mean_probs_is_the_ensemble_and_reduces_to_logits_for_one_member():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 50, 5, generator=g, dtype=torch.float64) * 3
    brute = torch.log(torch.softmax(logits, -1).mean(0))
    torch.testing.assert_close(CAL.log_mean_probs(logits), brute)
    for t in (0.5, 1.0, 2.5):
        torch.testing.assert_close(CAL.scaled_probs(CAL.log_mean_probs(logits[:1]), t), torch.softmax(logits[0] / t, -1))


def test_all_correct_calibration_data_keeps_t_one():
    logits = torch.tensor([[5.0, 0.0], [0.0, 4.0], [3.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    t, note = CAL.fit_temperature(logits, y)
    assert t == 1.0 and "not identifiable" in note
    t, note = CAL.fit_temperature(logits, torch.tensor([0, 1, 1]))
    assert note is None and 0 < t < 20


def test_calibration_plan_splits(digits):
    plan = CAL.calibration_plan(digits, CAL.Config())
    assert len(plan.calib) + len(plan.eval) == len(digits.test) == 360
    assert plan.info["calibration_size"] == 180
    # disjoint and stratified
    rows = {tuple(r.tolist()) for r in digits.test.x.flatten(1)}
    assert len(rows) == len(digits.test)
    a = {tuple(r.tolist()) for r in plan.calib.x.flatten(1)}
    b = {tuple(r.tolist()) for r in plan.eval.x.flatten(1)}
    assert not a & b
    assert (torch.bincount(plan.calib.y, minlength=10) - torch.bincount(plan.eval.y, minlength=10)).abs().max() <= 1
    again = CAL.calibration_plan(digits, val_seed=0)
    assert torch.equal(again.calib.x, plan.calib.x)
    assert not torch.equal(CAL.calibration_plan(digits, val_seed=1).calib.x, plan.calib.x)
    tr = CAL.calibration_plan(digits, val_source="train", val_size=100)
    assert len(tr.calib) == 100 and tr.eval is digits.test and "in-sample" in tr.info["note"]
    with pytest.raises(LowlossError, match="val-source"):
        CAL.calibration_plan(digits, val_source="valid")
    with pytest.raises(LowlossError, match="val-size 360"):
        CAL.calibration_plan(digits, val_size=360)


def test_materialise_fixes_sampled_members():
    model, data, members = _toy()
    vec = members[0][0]

    def sampler(n, gen):
        for _ in range(n):
            yield vec + torch.randn(vec.shape, generator=gen), None

    pred = Predictor(model, data, sampler=sampler, num_samples=4)
    fixed = CAL.materialise(pred, torch.Generator().manual_seed(0))
    assert len(fixed.fixed) == 4 and fixed.sampler is None
    l1, _ = fixed.member_logits(data.test)
    l2, _ = fixed.member_logits(data.test)
    assert torch.equal(l1, l2)


# ----------------------------------------------------------------------------------------------- shift
def _tiny_runs(tmp_path, digits, n=2):
    """Finished `train`-shaped run directories of a tiny MLP on digits whose readout is a least-squares fit
    (better than chance, quick to make)."""
    from lowloss.models import build_model
    from lowloss.rundir import RunDir

    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        model = build_model("mlp", digits.input_shape, 10, {"widths": "16"})
        with torch.no_grad():
            h = model.net[:-1](digits.train.x)
            onehot = torch.nn.functional.one_hot(digits.train.y, 10).float() * 8 - 4
            sol = torch.linalg.lstsq(torch.cat([h, torch.ones(len(h), 1)], 1), onehot).solution
            model.net[-1].weight.copy_(sol[:-1].T)
            model.net[-1].bias.copy_(sol[-1])
        d = tmp_path / f"run{i}"
        rd = RunDir.open(d, "train", {"seed": i, "device": "cpu"})
        rd.save_tensors("model.safetensors", model.state_dict())
        rd.finish({}, model={"model": "mlp", "model_options": {"widths": "16"}, "data": "digits", "data_seed": 0,
                             "data_dir": None})
        dirs.append(d)
    return dirs


def test_shift_json_layout_cache_and_single_is_member_zero(tmp_path, digits, monkeypatch):
    from click.testing import CliRunner

    from lowloss.cli import cli
    from lowloss.methods.predictor import Predictor as Pred

    runs = _tiny_runs(tmp_path, digits)
    out = tmp_path / "shift"
    args = ["shift", *map(str, runs), "--corruptions", "gaussian_noise,contrast", "--severities", "1,5",
            "--out", str(out), "--device", "cpu", "-q"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "run.json").read_text())
    assert res["method"] == "shift" and res["info"]["methods"] == ["single", "ensemble"]
    for block in (res, res["temperature_scaled"]):
        for m in ("single", "ensemble"):
            assert set(block[m]) == {"gaussian_noise", "contrast"}
            for c in block[m]:
                assert set(block[m][c]) == {"1", "5"}
                assert {"accuracy", "nll", "ece"} <= set(block[m][c]["5"])
    assert res["info"]["members"] == {"single": 1, "ensemble": 2}
    assert (out / "shift.png").exists() and (out / "corruptions.png").exists()
    assert (out / "cache" / "ensemble" / "contrast_5.safetensors").exists() and not (out / "cache" / "single").exists()
    # temperature scaling never changes accuracy
    for m in ("single", "ensemble"):
        for c in ("gaussian_noise", "contrast"):
            for s in ("1", "5"):
                assert res[m][c][s]["accuracy"] == res["temperature_scaled"][m][c][s]["accuracy"]
    # single = the first run alone, recomputed independently
    from lowloss.corruptions import corrupt_split
    from lowloss.methods.predictor import run_predictor

    p = run_predictor(runs[0], device="cpu")
    plan = CAL.calibration_plan(p.data)
    probs, y = p.predict_probs(corrupt_split(plan.eval, p.data, "contrast", 5, seed=0))
    want = M.classification_metrics(probs, y)
    assert res["single"]["contrast"]["5"]["nll"] == pytest.approx(want["nll"], abs=1e-6)
    assert res["single"]["contrast"]["5"]["accuracy"] == pytest.approx(want["accuracy"])
    # an interrupted benchmark continues with --resume and reads every logit from the cache
    (out / "run.json").unlink()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "--resume" in str(r.exception)
    monkeypatch.setattr(Pred, "member_logits", lambda *a, **k: pytest.fail("recomputed a cached logit"))
    r = CliRunner().invoke(cli, args + ["--resume"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    again = json.loads((out / "run.json").read_text())
    assert again["ensemble"] == res["ensemble"] and again["temperature_scaled"] == res["temperature_scaled"]
    # another configuration in the same directory is refused
    r = CliRunner().invoke(cli, args + ["--seed", "3"])
    assert r.exit_code != 0 and "another config" in str(r.exception)


def test_calibrate_command(tmp_path, digits):
    from click.testing import CliRunner

    from lowloss.cli import cli

    runs = _tiny_runs(tmp_path, digits)
    out = tmp_path / "cal"
    r = CliRunner().invoke(cli, ["calibrate", *map(str, runs), "--out", str(out), "--device", "cpu", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "run.json").read_text())
    assert res["method"] == "calibrate" and set(res["results"]) == {"run0", "run1", "ensemble of 2"}
    assert res["calibration"]["calibration_size"] == 180
    for v in res["results"].values():
        assert v["before"]["accuracy"] == v["after"]["accuracy"]
        assert v["fit_data"]["after"]["nll"] <= v["fit_data"]["before"]["nll"] + 1e-12
        assert sum(v["reliability"]["before"]["count"]) == 180
    assert (out / "reliability.png").exists()
    r = CliRunner().invoke(cli, ["calibrate", *map(str, runs), "--out", str(tmp_path / "one"), "--device", "cpu",
                                 "--no-ensemble", "--val-source", "train", "--val-size", "50", "-q"],
                           catch_exceptions=False)
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    assert set(one["results"]) == {"run0", "run1"} and one["calibration"]["calibration_size"] == 50


# ----------------------------------------------------------------------------------------------- regression
def test_regression_scores_closed_form():
    from lowloss.methods.regression import predictive

    y = np.array([0.0, 0.5, -1.0])
    f = np.array([[0.1, 0.4, -0.8]] * 3)
    s = predictive(f, y, 0.1)
    want = np.mean(-0.5 * (np.log(2 * np.pi * 0.01) + (y - f[0]) ** 2 / 0.01))
    assert s["test_ll"] == pytest.approx(want) and s["test_ll_mixture"] == pytest.approx(want)
    # two members: the mixture density by hand
    f2 = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    s2 = predictive(f2, y, 0.5)
    dens = lambda m: np.exp(-0.5 * (y - m) ** 2 / 0.25) / math.sqrt(2 * math.pi * 0.25)  # noqa: E731
    assert s2["test_ll_mixture"] == pytest.approx(np.mean(np.log(0.5 * dens(0.0) + 0.5 * dens(1.0))))
    var = 0.25 + 0.25
    assert s2["test_ll"] == pytest.approx(np.mean(-0.5 * (np.log(2 * np.pi * var) + (y - 0.5) ** 2 / var)))


@pytest.mark.slow
def test_regression_and_spirals_end_to_end(tmp_path):
    from lowloss.api import run

    res = run("regression", out=tmp_path / "reg", quiet=True, modes=2, espro_modes=1, epochs=200, vertex_epochs=2,
              swag_epochs=2, samples=4)
    assert set(res["results"]) == {"espro", "ensemble", "swag"}
    assert (tmp_path / "reg" / "regression.png").exists()
    mode = json.loads((tmp_path / "reg" / "modes" / "mode_0" / "run.json").read_text())
    assert mode["method"] == "train" and mode["model"]["model"] == "mlp" and len(mode["history"]) == 200
    # an interrupted run continues: finished sub-runs are kept, the rest gives the same numbers
    (tmp_path / "reg" / "run.json").unlink()
    before = (tmp_path / "reg" / "swag" / "swag.safetensors").stat().st_mtime_ns
    again = run("regression", out=tmp_path / "reg", quiet=True, resume=True, plots=False, modes=2, espro_modes=1,
                epochs=200, vertex_epochs=2, swag_epochs=2, samples=4)
    assert again["results"] == res["results"]
    assert (tmp_path / "reg" / "swag" / "swag.safetensors").stat().st_mtime_ns == before
    sp = run("spirals", out=tmp_path / "sp", quiet=True, epochs=200, vertex_epochs=1, shown=3, members=4, grid=20)
    assert len(sp["samples"]) == 3 and len(sp["vertices"]) == 4
    assert (tmp_path / "sp" / "spirals.png").exists()


def test_full_batch_mode_resumes_exactly(tmp_path):
    from lowloss.methods.regression import ModeConfig, train_mode
    from lowloss.rundir import load_run

    cfg = ModeConfig(data="regression1d", widths="8", epochs=250, lr=0.01, wd=1e-4, seed=0, data_seed=0, device="cpu")
    train_mode(cfg, tmp_path / "full", quiet=True)
    train_mode(cfg, tmp_path / "half", quiet=True, stop_after_epochs=150)  # the last checkpoint: epoch 100
    assert (tmp_path / "half" / "checkpoint.safetensors").exists() and not (tmp_path / "half" / "run.json").exists()
    with pytest.raises(LowlossError, match="--resume"):
        train_mode(cfg, tmp_path / "half", quiet=True)
    train_mode(cfg, tmp_path / "half", resume=True, quiet=True)
    a, b = load_run(tmp_path / "full"), load_run(tmp_path / "half")
    assert torch.equal(a.vector, b.vector)
    info = json.loads((tmp_path / "half" / "run.json").read_text())
    assert info["method"] == "train" and [h["epoch"] for h in info["history"]] == list(range(1, 251))
