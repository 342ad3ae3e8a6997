"""SWAG: moments against brute force, sampling against the stored moments, predictor, MultiSWAG, curve SWAG,
resume."""

import math

import pytest
import torch
from safetensors.torch import load_file

from lowloss.methods import swag
from lowloss.methods.swag import SwagMoments, load_swag, swag_predictor
from lowloss.methods.train import Config as TrainConfig
from lowloss.methods.train import train as train_mode
from lowloss.subspaces.gaussian import SwagGaussian

TINY = dict(model="mlp", model_options={"widths": "16", "bn": True}, batch_size=256, device="cpu")


def _iterates(n=9, p=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p, generator=g, dtype=torch.float64) * 0.1 + 1.0 for _ in range(n)]


def test_moments_match_brute_force_and_keep_last_k():
    ws = _iterates()
    m = SwagMoments(rank=4)
    for w in ws:
        m.update(w)
    stack = torch.stack(ws)
    torch.testing.assert_close(m.mean, stack.mean(0))
    torch.testing.assert_close(m.sq_mean, (stack ** 2).mean(0))
    running = [torch.stack(ws[: i + 1]).mean(0) for i in range(len(ws))]
    want = torch.stack([ws[i] - running[i] for i in range(len(ws) - 4, len(ws))])
    torch.testing.assert_close(m.deviations, want)
    torch.testing.assert_close(m.variance(), stack.var(0, unbiased=False))


def test_moments_checkpoint_round_trip_is_exact():
    ws = _iterates(n=12)
    full = SwagMoments(rank=5)
    for w in ws:
        full.update(w)
    part = SwagMoments(rank=5)
    for w in ws[:7]:
        part.update(w)
    resumed = SwagMoments(rank=5)
    resumed.load_state_tensors({k: v.clone() for k, v in part.state_tensors().items()})
    for w in ws[7:]:
        resumed.update(w)
    for a, b in ((full.mean, resumed.mean), (full.sq_mean, resumed.sq_mean), (full.deviations, resumed.deviations)):
        assert torch.equal(a, b)
    assert full.n == resumed.n == 12


def test_sampling_formula_uses_sqrt_scale_and_k_minus_1():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.04, 0.01, 0.09], dtype=torch.float64)
    dev = torch.tensor([[0.1, 0.0, -0.2], [0.0, 0.3, 0.1]], dtype=torch.float64)  # K = 2 collected
    g = SwagGaussian(mean, var + mean ** 2, dev, scale=0.3)
    z1, z2 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([1.5, -0.5], dtype=torch.float64)
    want = mean + math.sqrt(0.3) * (var.sqrt() * z1 / math.sqrt(2) + dev.T @ z2 / math.sqrt(2 * (2 - 1)))
    torch.testing.assert_close(g.points(torch.cat([z1, z2])[None])[0], want)
    diag = SwagGaussian(mean, var + mean ** 2, dev, scale=0.3, diagonal=True)
    torch.testing.assert_close(diag.points(z1[None])[0], mean + math.sqrt(0.3) * var.sqrt() * z1)


def test_variance_is_clamped_and_single_deviation_is_dropped():
    mean = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = SwagGaussian(mean, mean ** 2 - 1e-3, torch.ones(1, 2, dtype=torch.float64))  # negative variance, K = 1
    assert torch.equal(g.sigma, torch.full((2,), 1e-15, dtype=torch.float64))
    assert g.rank == 0 and g.dim == 2


@pytest.mark.parametrize("diagonal", [False, True])
def test_sample_mean_and_covariance_match_stored_moments(diagonal):
    gen = torch.Generator().manual_seed(0)
    p, k = 4, 3
    mean = torch.randn(p, generator=gen, dtype=torch.float64)
    var = torch.rand(p, generator=gen, dtype=torch.float64) * 0.5 + 0.1
    dev = torch.randn(k, p, generator=gen, dtype=torch.float64)
    g = SwagGaussian(mean, var + mean ** 2, dev, scale=0.5, diagonal=diagonal)
    want = 0.5 * torch.diag(var) if diagonal else 0.25 * (torch.diag(var) + dev.T @ dev / (k - 1))
    torch.testing.assert_close(g.covariance(), want)
    n = 200_000
    x = g.sample_vectors(n, torch.Generator().manual_seed(1))
    sd = want.diag().sqrt()
    assert ((x.mean(0) - mean).abs() <= 5 * sd / math.sqrt(n)).all()
    emp = torch.cov(x.T)
    # standard error of a Gaussian sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    se = ((want.diag()[:, None] * want.diag()[None, :] + want ** 2) / n).sqrt()
    assert ((emp - want).abs() <= 5 * se).all(), (emp - want).abs() / se


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("swagruns")
    out = []
    for s in (0, 1):
        train_mode(TrainConfig(epochs=1, seed=s, **TINY), root / f"r{s}", quiet=True, data=digits)
        out.append(root / f"r{s}")
    return out


def test_swag_run_format_predictor_and_resume(runs, digits, tmp_path):
    cfg = swag.Config(epochs=2, lr=0.02, every_epochs=0.5, rank=3, scale=0.5, samples=3, device="cpu")
    info = swag.swag(runs[0], cfg, tmp_path / "a", quiet=True, data=digits)
    assert info["method"] == "swag" and info["kind"] == "swag" and info["model"]["model"] == "mlp"
    assert info["n_models"] == 4 and info["collected_deviations"] == 3
    tensors, meta = load_swag(tmp_path / "a")
    p = tensors["mean"].numel()
    assert tensors["deviations"].shape == (3, p) and tensors["sq_mean"].shape == (p,)
    assert meta["n_models"] == "4" and meta["rank"] == "3" and meta["scale"] == "0.5" and meta["base_run"]
    assert info["metrics"]["swag"]["bma"]["members"] == 3
    assert "iterates, K=3" in swag.summary(info)
    # the SWA mean is the first moment: the same average SWA computes (float64 here, float32 there)
    from lowloss.methods import swa

    s = swa.swa(runs[0], out=tmp_path / "swa", quiet=True, data=digits, epochs=2, lr=0.02, every_epochs=0.5,
                device="cpu")
    assert info["metrics"]["swa"] == pytest.approx(s["final"]["test"], abs=1e-6)
    # predictor: `samples` members, BN left to be recomputed per sample, reproducible per generator
    pred = swag.load(tmp_path / "a", samples=4)
    m1 = list(pred.members(torch.Generator().manual_seed(5)))
    m2 = list(swag_predictor(tmp_path / "a", samples=4).members(torch.Generator().manual_seed(5)))
    assert len(m1) == 4 and all(b is None for _, b in m1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(m1, m2))
    assert not torch.equal(m1[0][0], m1[1][0])
    assert len(pred.info["means"]) == 1 and torch.equal(pred.info["means"][0], tensors["mean"])
    # interrupted + resumed == uninterrupted
    cfg.evaluate = False
    assert swag.swag(runs[0], cfg, tmp_path / "b", quiet=True, data=digits, stop_after_epochs=1) == \
        {"stopped_after_epoch": 1}
    swag.swag(runs[0], cfg, tmp_path / "b", quiet=True, data=digits, resume=True)
    a, b = load_file(str(tmp_path / "a/swag.safetensors")), load_file(str(tmp_path / "b/swag.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_swag_scale_zero_is_the_swa_mean(runs, digits, tmp_path):
    swag.swag(runs[0], out=tmp_path / "s", quiet=True, data=digits, epochs=1, lr=0.02, every_epochs=0.5, rank=2,
              device="cpu", evaluate=False)
    tensors, _ = load_swag(tmp_path / "s")
    v, _ = next(swag.load(tmp_path / "s", samples=1, scale=0.0).members())
    torch.testing.assert_close(v.double(), tensors["mean"], rtol=0, atol=1e-7)


def test_multiswag_is_a_stratified_mixture_of_sub_runs(runs, digits, tmp_path):
    from lowloss.methods.predictor import load_predictor
    from lowloss.rundir import read_result

    cfg = swag.Config(epochs=1, lr=0.02, every_epochs=0.5, rank=2, samples=4, seed=3, device="cpu")
    info = swag.swag(runs, cfg, tmp_path / "ms", quiet=True)
    assert info["method"] == "swag" and info["kind"] == "multiswag"
    assert info["members"] == ["swag_000", "swag_001"]
    assert info["metrics"]["multiswag"]["bma"]["members"] == 4 and "MultiSWAG of 2 runs" in swag.summary(info)
    for i, m in enumerate(info["members"]):  # each member is an ordinary SWAG run with its own seed
        sub = read_result(tmp_path / "ms" / m, "swag")
        assert sub["kind"] == "swag" and sub["config"]["seed"] == 3 + i and "metrics" not in sub
    pred = load_predictor(tmp_path / "ms", samples=4)
    vs = [v for v, _ in pred.members(torch.Generator().manual_seed(3))]
    assert len(vs) == 4
    means = [load_swag(tmp_path / "ms" / m)[0]["mean"] for m in info["members"]]
    assert all(torch.equal(a, b) for a, b in zip(pred.info["means"], means))
    # samples alternate between the members: each is nearer its own member's mean
    for i, v in enumerate(vs):
        d = [(v.double() - mu).norm() for mu in means]
        assert d[i % 2] < d[1 - i % 2]


def test_swag_inputs_are_checked(runs, tmp_path):
    from lowloss.utils import LowlossError

    with pytest.raises(LowlossError, match="--schedule constant"):
        swag.swag(curve=str(tmp_path), out=tmp_path / "c", schedule="cyclic")
    with pytest.raises(LowlossError, match="RUNS or --curve"):
        swag.swag(runs[0], out=tmp_path / "d", curve=str(tmp_path))


def test_curve_swag_samples_new_curves_between_the_same_endpoints(runs, digits, tmp_path):
    from lowloss.methods.connect import save_curve
    from lowloss.rundir import RunDir, load_runs
    from lowloss.subspaces.curves import make_curve

    ra, rb = load_runs(runs, device="cpu")
    curve_dir = tmp_path / "curve"  # a connect run directory holding an untrained Bezier curve
    rd = RunDir.open(curve_dir, "connect", {"inputs": [str(r.resolve()) for r in runs]}, quiet=True)
    save_curve(curve_dir / "curve.safetensors", make_curve("bezier", ra.vector, rb.vector, 1), [str(r) for r in runs])
    rd.finish({})
    info = swag.swag(curve=str(curve_dir), out=tmp_path / "cs", quiet=True, samples=2, points=3, epochs=1, lr=0.02,
                     every_epochs=0.5, rank=2, device="cpu")
    assert info["kind"] == "curve_swag" and info["n_models"] == 2 and info["bends"] == [1]
    assert info["collect_every_steps"] == 3  # the batch size is the base run's (256: 6 steps per epoch)
    tensors, meta = load_swag(tmp_path / "cs")
    assert meta["kind"] == "curve" and tensors["mean"].numel() == ra.vector.numel()
    loss = info["metrics"]["train_loss"]
    for s in loss["sampled"]:  # only the bend moves: the endpoints (t = 0, 1) are the same networks
        assert s[0] == loss["trained"][0] and s[-1] == loss["trained"][-1]
    assert info["metrics"]["sampled_max_train_loss_max"] == max(max(s) for s in loss["sampled"])
    assert "bend iterates" in swag.summary(info)
    pred = swag.load(tmp_path / "cs", samples=2)  # curve SWAG as a predictor: theta ~ SWAG, t ~ U(0,1)
    assert len(list(pred.members(torch.Generator().manual_seed(0)))) == 2
