"""FGE / SSE schedules and snapshots, SWA vs torch's AveragedModel, ensembles, resume, budget accounting."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel

from lowloss import params as P
from lowloss.methods import budget as B
from lowloss.methods.ensemble import evaluate_directories, read_members, save_members, snapshot_predictor
from lowloss.methods.fge import (
    FGEConfig,
    SSEConfig,
    StepSchedule,
    fge_lr,
    fge_schedule,
    fge_snapshot_index,
    run_fge,
    run_sse,
    sse_lr,
    sse_schedule,
)
from lowloss.methods.predictor import run_predictor
from lowloss.methods.swa import RunningAverage, SWAConfig, run_swa, swa_cyclic_lr, train_and_collect
from lowloss.methods.train import Config as TrainConfig
from lowloss.methods.train import train as train_mode
from lowloss.rundir import load_run
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
    assert lrs[fge_snapshot_index(c)] == pytest.approx(min(lrs), abs=1e-15)
    if c % 2 == 0:
        assert lrs[fge_snapshot_index(c)] == pytest.approx(0.0005, abs=1e-15)


def test_fge_snapshots_taken_at_lowest_lr(base_run, digits, tmp_path):
    info = run_fge(base_run, FGEConfig(cycles=3, cycle_epochs=2, lr_high=0.05, lr_low=0.001, device="cpu"),
                   tmp_path / "fge", quiet=True, data=digits)
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
    # members differ from the final weights (which continued past the last snapshot)
    ens = info["metrics"]["ensemble"]
    assert ens["members"] == 3 and 0 <= ens["accuracy"] <= 1


def test_sse_snapshot_at_cycle_end(digits, tmp_path):
    info = run_sse(TrainConfig(seed=1, **TINY), SSEConfig(cycles=2, cycle_epochs=1, lr=0.1), tmp_path / "sse",
                   quiet=True, data=digits, evaluate=False)
    assert info["snapshot_steps"] == [5, 11]
    lr = sse_schedule(6, 0.1)
    assert info["snapshot_lrs"] == pytest.approx([min(lr(t) for t in range(6))] * 2)
    pred = snapshot_predictor(tmp_path / "sse")
    assert len(pred) == 2


def test_cycle_too_short_is_a_clear_error(base_run, digits, tmp_path):
    with pytest.raises(LowlossError, match="cycle-epochs"):
        run_fge(base_run, FGEConfig(cycles=2, cycle_epochs=0.1, device="cpu"), tmp_path / "x", quiet=True, data=digits)


# ------------------------------------------------------------------------------------------------ SWA
class _AveragedModelCollector:
    """Feeds the same iterates to torch's AveragedModel (the reference)."""

    def __init__(self, model):
        self.model, self.ref = model, AveragedModel(model)

    def update(self, vector):
        assert torch.equal(vector, P.flatten(self.model))
        self.ref.update_parameters(self.model)

    def state_tensors(self):
        return {}

    def load_state_tensors(self, t):
        pass


def test_swa_average_equals_averaged_model(base_run, digits):
    run = load_run(base_run, device="cpu", data=digits)
    avg, ref = RunningAverage(), _AveragedModelCollector(run.model)
    train_and_collect(run.model, run.data, epochs=3, lr_at_step=lambda t: 0.02, collect_every=2, start_step=4,
                      collectors={"swa": avg, "ref": ref}, momentum=0.9, wd=5e-4, batch_size=256,
                      generator=torch.Generator().manual_seed(0), device="cpu", run_dir=None, resume=False,
                      quiet=True, desc="t")
    assert avg.n == int(ref.ref.n_averaged) == 7  # steps 6, 8, ..., 18
    torch.testing.assert_close(avg.mean, P.flatten(ref.ref.module), rtol=0, atol=1e-7)


def test_swa_run_recomputes_bn_and_resumes_exactly(base_run, digits, tmp_path):
    cfg = SWAConfig(epochs=3, lr=0.02, every_epochs=0.5, device="cpu")
    full = run_swa(base_run, cfg, tmp_path / "a", quiet=True, data=digits)
    part = run_swa(base_run, cfg, tmp_path / "b", quiet=True, data=digits, stop_after_epochs=1)
    assert part == {"stopped_after_epoch": 1}
    with pytest.raises(LowlossError, match="--resume"):
        run_swa(base_run, cfg, tmp_path / "b", quiet=True, data=digits)
    run_swa(base_run, cfg, tmp_path / "b", quiet=True, data=digits, resume=True)
    a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["swa"]["n_averaged"] == 6
    # BN statistics of the average are those recompute_bn gives for it (the whole training set in one batch)
    run = load_run(tmp_path / "a", device="cpu", data=digits)
    fresh = P.recompute_bn(run.model, run.vector, [digits.train.x])
    for k, v in fresh.items():
        if "running" in k:
            torch.testing.assert_close(run.buffers[k], v, rtol=1e-5, atol=1e-6)


def test_fge_resume_equals_uninterrupted(base_run, digits, tmp_path):
    cfg = FGEConfig(cycles=3, cycle_epochs=1, lr_high=0.05, lr_low=0.001, device="cpu")
    run_fge(base_run, cfg, tmp_path / "a", quiet=True, data=digits, evaluate=False)
    assert run_fge(base_run, cfg, tmp_path / "b", quiet=True, data=digits, stop_after_epochs=2) == \
        {"stopped_after_epoch": 2}
    run_fge(base_run, cfg, tmp_path / "b", quiet=True, data=digits, resume=True, evaluate=False)
    a = load_file(str(tmp_path / "a/members.safetensors"))
    b = load_file(str(tmp_path / "b/members.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run with the same config is not retrained; another config is refused
    assert run_fge(base_run, cfg, tmp_path / "a", quiet=True, data=digits)["snapshot_steps"] == [3, 9, 15]
    with pytest.raises(LowlossError, match="another config"):
        run_fge(base_run, FGEConfig(cycles=2, cycle_epochs=1, device="cpu"), tmp_path / "a", quiet=True, data=digits)


# ------------------------------------------------------------------------------------------------ ensembles
def test_ensemble_of_two_copies_equals_the_model(base_run, digits, tmp_path):
    run = load_run(base_run, device="cpu", data=digits)
    save_members(tmp_path / "two", [(run.vector, run.buffers), (run.vector, run.buffers)], method="copies",
                 base_run=base_run)
    p2, y2 = snapshot_predictor(tmp_path / "two").predict_probs(digits.test)
    p1, y1 = run_predictor(base_run).predict_probs(digits.test)
    assert torch.equal(y1, y2)
    torch.testing.assert_close(p2, p1, rtol=0, atol=1e-12)
    res = evaluate_directories([base_run, base_run], out=tmp_path / "ens")
    for k in ("accuracy", "nll", "ece", "brier"):
        assert res["ensemble"][k] == pytest.approx(res["inputs"][0]["metrics"][k], abs=1e-9)
    assert (tmp_path / "ens/ensemble.json").exists() and (tmp_path / "ens/probs.safetensors").exists()


def test_ensemble_averages_probabilities_not_logits(base_run, digits, tmp_path):
    run = load_run(base_run, device="cpu", data=digits)
    v2 = run.vector * 1.7  # a different member: same architecture, sharper logits
    save_members(tmp_path / "m", [(run.vector, run.buffers), (v2, run.buffers)], method="test", base_run=base_run)
    pred = snapshot_predictor(tmp_path / "m")
    logits, _ = pred.member_logits(digits.test)
    probs, _ = pred.predict_probs(digits.test)
    torch.testing.assert_close(probs, torch.softmax(logits.double(), -1).mean(0))
    assert not torch.allclose(probs, torch.softmax(logits.double().mean(0), -1), atol=1e-4)


# ------------------------------------------------------------------------------------------------ budget
def test_budget_accounting_spends_equal_epochs():
    cfg = B.BudgetConfig(epochs_per_budget=20, members_per_budget=2)
    B.check_config(cfg)
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
        B.check_config(B.BudgetConfig(epochs_per_budget=20, members_per_budget=3))
    with pytest.raises(LowlossError, match="unknown method"):
        B.check_config(B.BudgetConfig(methods=("single", "dropout")))


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
def test_budget_end_to_end_and_rerun_trains_nothing(tmp_path):
    cfg = B.BudgetConfig(model="mlp", model_options={"widths": "16"}, budgets=(1,), seeds=1, epochs_per_budget=4,
                         batch_size=256, sse_cycles_per_budget=2, pretrain_fraction=0.5, samples=4, device="cpu")
    res = B.BudgetRunner(cfg, tmp_path, quiet=True).run()
    assert set(res["summary"]) == set(B.METHODS)
    assert (tmp_path / "budget.png").exists() and (tmp_path / "budget.md").exists()
    again = B.BudgetRunner(cfg, tmp_path, quiet=True)
    res2 = again.run()
    assert again.timings == {}
    assert res2["summary"] == res["summary"]
    assert math.isfinite(res["summary"]["swag"]["1"]["nll"]["mean"])
