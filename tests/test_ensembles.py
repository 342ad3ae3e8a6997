"""FGE / SSE schedules and snapshots, SWA vs torch's AveragedModel, ensembles, eval, resume, budget accounting."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel

from lowloss import params as P
from lowloss.engine.schedules import StepSchedule, fge_lr, fge_schedule, sse_lr, sse_schedule, swa_cyclic_lr
from lowloss.engine.train import Collect
from lowloss.methods import budget as B
from lowloss.methods import ensemble, fge, sse, swa
from lowloss.methods.ensemble import read_members, save_members, snapshot_predictor
from lowloss.methods.predictor import load_predictor, run_predictor
from lowloss.methods.train import Config as TrainConfig
from lowloss.methods.train import train as train_mode
from lowloss.rundir import load_run, read_result
from lowloss.utils import LowlossError

TINY = dict(model="mlp", model_options={"widths": "16", "bn": True}, batch_size=256, device="cpu")  # 6 steps/epoch


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("base") / "run"
    train_mode(TrainConfig(epochs=1, **TINY), out, quiet=True, data=digits)
    return out


# ------------------------------------------------------------------------------------------------ schedules
def test_fge_schedule_start_middle_end_match_formula():
    a1, a2 = 0.05, 0.0005
    assert fge_lr(0.0, a1, a2) == pytest.approx(a1, abs=1e-15)           # cycle start: high
    assert fge_lr(0.25, a1, a2) == pytest.approx(0.5 * (a1 + a2), abs=1e-15)
    assert fge_lr(0.5, a1, a2) == pytest.approx(a2, abs=1e-15)           # middle: low
    assert fge_lr(0.75, a1, a2) == pytest.approx(0.5 * (a1 + a2), abs=1e-15)
    assert fge_lr(1 - 1e-12, a1, a2) == pytest.approx(a1, abs=1e-12)     # end: back to high
    for s in torch.rand(50, generator=torch.Generator().manual_seed(0)).tolist():
        want = (1 - 2 * s) * a1 + 2 * s * a2 if s < 0.5 else (2 * s - 1) * a1 + (2 - 2 * s) * a2
        assert fge_lr(s, a1, a2) == pytest.approx(want, abs=1e-15)
    # per-step schedule as the trainer sees it (epoch -> step -> position in the cycle)
    n, c = 6, 10
    sched = StepSchedule(fge_schedule(c, a1, a2), n)
    for t in range(3 * c):
        assert sched(t / n) == pytest.approx(fge_lr((t % c) / c, a1, a2), abs=1e-15)
    assert sched(0) == a1 and sched(5 / n) == pytest.approx(a2) and sched(c / n) == a1


def test_sse_and_swa_cyclic_schedules():
    assert sse_lr(0.0, 0.1) == pytest.approx(0.1)
    assert sse_lr(0.5, 0.1) == pytest.approx(0.05)
    assert sse_lr(1 - 1e-9, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert swa_cyclic_lr(0, 4, 0.1, 0.01) == pytest.approx(0.1 * 0.75 + 0.01 * 0.25)
    assert swa_cyclic_lr(3, 4, 0.1, 0.01) == pytest.approx(0.01)  # the averaged (last) step is at a2
    assert swa_cyclic_lr(4, 4, 0.1, 0.01) == swa_cyclic_lr(0, 4, 0.1, 0.01)


@pytest.mark.parametrize("c", [10, 11, 23])
def test_snapshot_index_is_the_lowest_lr_of_its_cycle(c):
    lr = fge_schedule(c, 0.05, 0.0005)
    lrs = [lr(t) for t in range(c)]
    assert lrs[fge.fge_snapshot_index(c)] == pytest.approx(min(lrs), abs=1e-15)
    if c % 2 == 0:
        assert lrs[fge.fge_snapshot_index(c)] == pytest.approx(0.0005, abs=1e-15)


# ------------------------------------------------------------------------------------------------ FGE / SSE
def test_fge_snapshots_taken_at_lowest_lr(base_run, digits, tmp_path):
    info = fge.fge(base_run, out=tmp_path / "fge", quiet=True, data=digits, cycles=3, cycle_epochs=2, lr_high=0.05,
                   lr_low=0.001, device="cpu")
    assert info["method"] == "fge" and info["model"]["model"] == "mlp"
    c = info["steps_per_cycle"]
    assert c == 12
    assert info["snapshot_steps"] == [6, 18, 30]
    sched = fge_schedule(c, 0.05, 0.001)
    lowest = min(sched(t) for t in range(3 * c))
    assert info["snapshot_lrs"] == pytest.approx([lowest] * 3, abs=1e-15)
    assert lowest == pytest.approx(0.001, abs=1e-15)
    members, meta = read_members(tmp_path / "fge")
    assert len(members) == 3 and meta["method"] == "fge"
    assert all(b is not None and any(k.endswith("running_mean") for k in b) for _, b in members)  # BN kept
    assert not torch.equal(members[0][0], members[1][0])
    ens = info["metrics"]["ensemble"]
    assert ens["members"] == 3 and 0 <= ens["accuracy"] <= 1
    # the run's metrics are those of its snapshots loaded back from the directory
    pred = fge.load(tmp_path / "fge")
    probs, y = ensemble.member_probs(pred)
    assert ensemble.ensemble_curve(probs, y) == info["metrics"]["ensemble_by_size"]
    assert "snapshots | ensemble test acc" in fge.summary(info)


def test_sse_snapshot_at_cycle_end(digits, tmp_path):
    info = sse.sse(out=tmp_path / "sse", quiet=True, data=digits, seed=1, cycles=2, cycle_epochs=1, lr=0.1,
                   evaluate=False, **TINY)
    assert info["method"] == "sse" and info["model"]["model_options"] == {"widths": "16", "bn": True}
    assert info["snapshot_steps"] == [5, 11] and "metrics" not in info
    lr = sse_schedule(6, 0.1)
    assert info["snapshot_lrs"] == pytest.approx([min(lr(t) for t in range(6))] * 2)
    assert len(sse.load(tmp_path / "sse")) == 2
    assert len(load_predictor(tmp_path / "sse", samples=5)) == 2  # options of other kinds are ignored


def test_cycle_too_short_is_a_clear_error(base_run, digits, tmp_path):
    with pytest.raises(LowlossError, match="cycle-epochs"):
        fge.fge(base_run, out=tmp_path / "x", quiet=True, data=digits, cycles=2, cycle_epochs=0.1, device="cpu")
    with pytest.raises(LowlossError, match="--lr-high >= --lr-low"):  # checked before anything is written
        fge.fge(base_run, out=tmp_path / "y", quiet=True, lr_high=0.001, lr_low=0.01)
    assert not (tmp_path / "y").exists()


def test_fge_resume_equals_uninterrupted(base_run, digits, tmp_path):
    cfg = fge.Config(cycles=3, cycle_epochs=1, lr_high=0.05, lr_low=0.001, device="cpu", evaluate=False)
    fge.fge(base_run, cfg, tmp_path / "a", quiet=True, data=digits)
    assert fge.fge(base_run, cfg, tmp_path / "b", quiet=True, data=digits, stop_after_epochs=2) == \
        {"stopped_after_epoch": 2}
    with pytest.raises(LowlossError, match="--resume"):
        fge.fge(base_run, cfg, tmp_path / "b", quiet=True, data=digits)
    fge.fge(base_run, cfg, tmp_path / "b", quiet=True, data=digits, resume=True)
    a = load_file(str(tmp_path / "a/members.safetensors"))
    b = load_file(str(tmp_path / "b/members.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b/checkpoint.safetensors").exists()
    # a finished run with the same config is not retrained; another config is refused
    assert fge.fge(base_run, cfg, tmp_path / "a", quiet=True, data=digits)["snapshot_steps"] == [3, 9, 15]
    with pytest.raises(LowlossError, match="another config"):
        fge.fge(base_run, out=tmp_path / "a", quiet=True, data=digits, cycles=2, cycle_epochs=1, device="cpu")


# ------------------------------------------------------------------------------------------------ SWA
def test_swa_average_equals_averaged_model(base_run, digits):
    run = load_run(base_run, device="cpu", data=digits)
    avg, ref = swa.RunningAverage(), AveragedModel(run.model)

    def take(t):
        avg.update(P.flatten(run.model))
        ref.update_parameters(run.model)

    # collect after steps 6, 8, ..., 18 (1-based): every 2 steps from step 4 on
    swa.train_trajectory(run.model, run.data, lambda t: 0.02, swa.collect_every(take, 2, 4), {"swa": avg}, epochs=3,
                         momentum=0.9, wd=5e-4, batch_size=256, generator=torch.Generator().manual_seed(0),
                         device="cpu", run_dir=None, resume=False, quiet=True, desc="t")
    assert avg.n == int(ref.n_averaged) == 7
    torch.testing.assert_close(avg.mean, P.flatten(ref.module), rtol=0, atol=1e-7)


def test_collect_steps():
    seen = []
    c = Collect(seen.append, every=3, first=2, last=9)
    for step in range(1, 13):
        c(step, 0.0)
    assert seen == [2, 5, 8]


def test_swa_run_recomputes_bn_and_resumes_exactly(base_run, digits, tmp_path):
    cfg = swa.Config(epochs=3, lr=0.02, every_epochs=0.5, device="cpu")
    full = swa.swa(base_run, cfg, tmp_path / "a", quiet=True, data=digits)
    part = swa.swa(base_run, cfg, tmp_path / "b", quiet=True, data=digits, stop_after_epochs=1)
    assert part == {"stopped_after_epoch": 1}
    with pytest.raises(LowlossError, match="--resume"):
        swa.swa(base_run, cfg, tmp_path / "b", quiet=True, data=digits)
    swa.swa(base_run, cfg, tmp_path / "b", quiet=True, data=digits, resume=True)
    a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["swa"]["n_averaged"] == 6 and full["swa"]["collect_every_steps"] == 3
    # an ordinary network run: method swa, its own config, the base run's architecture
    assert full["method"] == "swa" and full["config"]["lr"] == 0.02 and full["model"]["model"] == "mlp"
    assert full["swa"]["config"] == full["config"] and set(full["final"]) == {"train", "test"}
    assert "iterates averaged" in swa.summary(full)
    # BN statistics of the average are those recompute_bn gives for it (the whole training set in one batch)
    run = swa.load(tmp_path / "a", device="cpu", data=digits)
    fresh = P.recompute_bn(run.model, run.vector, [digits.train.x])
    for k, v in fresh.items():
        if "running" in k:
            torch.testing.assert_close(run.buffers[k], v, rtol=1e-5, atol=1e-6)
    # SWA from the SWA run: momentum, wd and batch size are the root training run's
    assert swa.base_values(cfg, tmp_path / "a") == {"momentum": 0.9, "wd": 5e-4, "batch_size": 256}
    assert swa.base_values(swa.Config(wd=0.0), tmp_path / "a")["wd"] == 0.0


def test_swa_config_is_checked_before_anything_is_written(base_run, tmp_path):
    with pytest.raises(LowlossError, match="--start"):
        swa.swa(base_run, out=tmp_path / "s", epochs=2, start=2)
    with pytest.raises(LowlossError, match="--lr-high"):
        swa.swa(base_run, out=tmp_path / "s", schedule="cyclic", lr=0.1, lr_high=0.05)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------ ensembles
def test_ensemble_of_two_copies_equals_the_model(base_run, digits, tmp_path):
    run = load_run(base_run, device="cpu", data=digits)
    save_members(tmp_path / "two", [(run.vector, run.buffers), (run.vector, run.buffers)], method="copies",
                 base_run=base_run)
    p2, y2 = snapshot_predictor(tmp_path / "two").predict_probs(digits.test)
    p1, y1 = run_predictor(base_run).predict_probs(digits.test)
    assert torch.equal(y1, y2)
    torch.testing.assert_close(p2, p1, rtol=0, atol=1e-12)
    res = ensemble.ensemble([base_run, base_run], out=tmp_path / "ens", quiet=True)
    for k in ("accuracy", "nll", "ece", "brier"):
        assert res["ensemble"][k] == pytest.approx(res["inputs"][0]["metrics"][k], abs=1e-9)
    assert res["method"] == "ensemble" and res["config"]["inputs"] == [str(base_run.resolve())] * 2
    probs = ensemble.load(tmp_path / "ens")
    assert set(probs) == {"ensemble", "labels", "input_000", "input_001"}
    torch.testing.assert_close(probs["ensemble"], p1.float(), rtol=0, atol=1e-6)
    assert "ensemble (2)" in ensemble.summary(res)


def test_ensemble_averages_probabilities_not_logits(base_run, digits, tmp_path):
    run = load_run(base_run, device="cpu", data=digits)
    v2 = run.vector * 1.7  # a different member: same architecture, sharper logits
    save_members(tmp_path / "m", [(run.vector, run.buffers), (v2, run.buffers)], method="test", base_run=base_run)
    pred = snapshot_predictor(tmp_path / "m")
    logits, _ = pred.member_logits(digits.test)
    probs, _ = pred.predict_probs(digits.test)
    torch.testing.assert_close(probs, torch.softmax(logits.double(), -1).mean(0))
    assert not torch.allclose(probs, torch.softmax(logits.double().mean(0), -1), atol=1e-4)


def test_member_probs_equal_the_per_vector_predictions(base_run, digits):
    """The engine's member probabilities are each vector's predict_probs (stored and recomputed BN)."""
    from lowloss.engine.evaluate import bn_buffers_for, predict_probs
    from lowloss.methods.predictor import Predictor

    run = load_run(base_run, device="cpu", data=digits)
    vs = [run.vector, run.vector * 0.9, run.vector * 1.1]
    pred = Predictor(run.model, run.data, fixed=[(vs[0], run.buffers), (vs[1], None), (vs[2], None)])
    probs, y = pred.member_probs(digits.test)
    assert probs.shape == (3, len(digits.test), 10) and probs.dtype == torch.float64
    assert torch.equal(y, digits.test.y)
    want = [predict_probs(run.model, vs[0], digits.test, bufs=run.buffers)[0]]
    want += [predict_probs(run.model, v, digits.test, bufs=bn_buffers_for(run.model, v, digits.train))[0]
             for v in vs[1:]]
    torch.testing.assert_close(probs, torch.stack(want), rtol=0, atol=1e-7)


def test_eval_runs_and_their_ensemble(base_run, digits, tmp_path):
    from lowloss.methods import eval as ev

    res = ev.evaluate([base_run, base_run], out=tmp_path / "ev", quiet=True, device="cpu")
    assert res["method"] == "eval" and res["split"] == "test" and res["runs"] == [str(base_run)] * 2
    one = res["metrics"][str(base_run)]
    assert res["metrics"]["ensemble (2)"] == pytest.approx(one, abs=1e-12)
    assert ev.load(tmp_path / "ev")["metrics"] == res["metrics"]
    assert "ensemble (2)" in ev.summary(res)


def test_commands_are_generated_from_the_configs():
    from click.testing import CliRunner

    from lowloss.cli import cli

    for name, flags in (("fge", ("--cycle-epochs", "--lr-high", "--momentum")), ("sse", ("--model-opt", "--cycles")),
                        ("swa", ("--every", "--schedule", "--batch-size")), ("ensemble", ("--recompute-bn",)),
                        ("budget", ("--budgets", "--members-per-budget", "--sse-cycles", "--methods")),
                        ("eval", ("--split",))):
        res = CliRunner().invoke(cli, [name, "--help"])
        assert res.exit_code == 0, res.output
        assert all(f in res.output for f in flags), (name, res.output)
        assert "--evaluate" not in res.output


# ------------------------------------------------------------------------------------------------ budget
def test_budget_accounting_spends_equal_epochs():
    cfg = B.Config(epochs=20, members_per_budget=2)
    cfg.check()
    for b in (1, 2, 3):
        acc = B.accounting(cfg, b)
        assert set(acc) == set(B.METHODS)
        assert all(v["epochs"] == 20 * b for v in acc.values())
        assert acc["ensemble"]["members"] * acc["ensemble"]["epochs_per_member"] == 20 * b
        assert acc["sse"]["cycles"] * acc["sse"]["cycle_epochs"] == 20 * b
        assert acc["fge"]["pretrain_epochs"] + acc["fge"]["cycles"] * acc["fge"]["cycle_epochs"] == 20 * b
        ms = acc["multiswag"]
        assert ms["members"] * (ms["pretrain_epochs_per_member"] + ms["swag_epochs_per_member"]) == 20 * b
    with pytest.raises(LowlossError, match="divisible"):
        B.Config(epochs=20, members_per_budget=3).check()
    with pytest.raises(LowlossError, match="unknown method"):
        B.Config(methods="single,dropout").check()
    parsed = B.Config(budgets="3,1", methods="fge, swa")
    parsed.check()
    assert parsed.budgets == (1, 3) and parsed.methods == ("fge", "swa")


def test_cached_probs_reuses_prefix(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(24, dtype=torch.float32).reshape(4, 3, 2)

    a = B.cached_probs(tmp_path, "k", compute, need=4)
    b = B.cached_probs(tmp_path, "k", compute, need=2)
    assert len(calls) == 1 and torch.equal(b, a[:2])
    B.cached_probs(tmp_path, "k", compute, need=5)
    assert len(calls) == 2


@pytest.mark.slow
def test_budget_end_to_end_and_resume_trains_nothing(tmp_path, monkeypatch):
    from lowloss import api
    from lowloss.methods import swag
    from lowloss.methods import train as train_method

    kw = dict(model="mlp", model_options={"widths": "16"}, budgets=(1,), seeds=1, epochs=4, batch_size=256,
              sse_cycles=2, pretrain_fraction=0.5, samples=4, device="cpu")
    res = api.run("budget", out=tmp_path, quiet=True, **kw)
    assert set(res["summary"]) == set(B.METHODS) and res["method"] == "budget"
    assert (tmp_path / "budget.png").exists() and (tmp_path / "budget.md").exists()
    assert math.isfinite(res["summary"]["swag"]["1"]["nll"]["mean"])
    # every member is an ordinary run directory
    assert read_result(tmp_path / "work/seed0/pretrain_e2", "train")["model"]["model"] == "mlp"
    assert read_result(tmp_path / "work/seed0/fge_b1", "fge")["config"]["inputs"] == \
        [str((tmp_path / "work/seed0/pretrain_e2").resolve())]
    assert read_result(tmp_path / "work/seed0/multiswag_m1", "swag")["kind"] == "swag"
    assert set(res["seconds"]) == {"pretrain", "single", "ensemble", "sse", "fge", "swag", "multiswag"}
    # an interrupted comparison continues without retraining or re-predicting any finished member
    (tmp_path / "run.json").unlink()
    for mod in (train_method, fge, sse, swag):
        monkeypatch.setattr(mod, "fit", lambda *a, **k: pytest.fail("retrained a finished member"))
    monkeypatch.setattr(B, "member_probs", lambda *a, **k: pytest.fail("re-predicted a cached member"))
    again = api.run("budget", out=tmp_path, quiet=True, resume=True, plots=False, **kw)
    assert again["summary"] == res["summary"] and again["per_seed"] == res["per_seed"]
    assert "## Budget 1 (4 epochs)" in B.summary(again)
