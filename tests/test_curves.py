"""Mode-connecting curves: closed forms, training through fit_subspace, path evaluation, run directories, resume."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from torch import nn

from lowloss.engine.fit import subspace_loss
from lowloss.methods import connect as C
from lowloss.params import flatten, functional_forward
from lowloss.plots.figures import draw
from lowloss.subspaces.curves import (
    Bezier,
    Line,
    PolyChain,
    bezier_coefficients,
    make_curve,
    polychain_coefficients,
)
from lowloss.utils import LowlossError

T = torch.linspace(0, 1, 101, dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one thread avoids OpenMP contention on a busy machine (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _vectors(n, p=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p, generator=g, dtype=dtype) for _ in range(n)]


# ------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_coefficients_sum_to_one_and_are_nonnegative(n):
    for a in (bezier_coefficients(T, n), polychain_coefficients(T, n)):
        assert a.shape == (len(T), n)
        assert torch.allclose(a.sum(1), torch.ones(len(T), dtype=torch.float64), atol=1e-14)
        assert (a >= 0).all()


def test_bezier_matches_bernstein_formulas_for_1_and_3_bends():
    t = T[:, None]
    one = torch.cat([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], 1)
    assert torch.allclose(bezier_coefficients(T, 3), one, atol=1e-15)
    three = torch.cat([(1 - t) ** 4, 4 * t * (1 - t) ** 3, 6 * t ** 2 * (1 - t) ** 2, 4 * t ** 3 * (1 - t), t ** 4], 1)
    assert torch.allclose(bezier_coefficients(T, 5), three, atol=1e-15)


def test_polychain_matches_methods_formula_for_1_bend():
    w1, theta, w2 = _vectors(3)
    chain = PolyChain([w1, theta, w2], [False, True, False])
    for t in T.tolist():
        if t <= 0.5:
            want = 2 * (t * theta + (0.5 - t) * w1)
        else:
            want = 2 * ((t - 0.5) * w2 + (1 - t) * theta)
        assert torch.allclose(chain.point(t), want, atol=1e-13), t


def test_polychain_matches_piecewise_linear_interpolation_for_3_bends():
    pts = _vectors(5)
    chain = PolyChain(pts, [False, True, True, True, False])
    for t in T.tolist():
        k = min(int(math.floor(4 * t)), 3)
        s = 4 * t - k
        want = (1 - s) * pts[k] + s * pts[k + 1]
        assert torch.allclose(chain.point(t), want, atol=1e-13), t
    # the knots are the control points themselves
    for i, p in enumerate(pts):
        assert torch.allclose(chain.point(i / 4), p, atol=1e-15)


@pytest.mark.parametrize("kind", ["bezier", "polychain", "line"])
@pytest.mark.parametrize("bends", [1, 3])
def test_endpoints_are_exact(kind, bends):
    w_a, w_b = _vectors(2, p=1000, dtype=torch.float32)
    curve = make_curve(kind, w_a, w_b, 0 if kind == "line" else bends)
    for i in range(1, curve.num_controls - 1):  # move the bends off the segment
        curve.set_control(i, torch.randn(1000))
    assert torch.equal(curve.point(0.0), w_a)
    assert torch.equal(curve.point(1.0), w_b)
    both = curve.points(torch.tensor([[0.0], [1.0]]))
    assert torch.equal(both[0], w_a) and torch.equal(both[1], w_b)


def test_quadratic_bezier_formula():
    w1, theta, w2 = _vectors(3)
    b = Bezier([w1, theta, w2], [False, True, False])
    got = b.points(T[:, None])
    t = T[:, None]
    want = (1 - t) ** 2 * w1 + 2 * t * (1 - t) * theta + t ** 2 * w2
    assert torch.allclose(got, want, atol=1e-14)


def test_line_and_bends_initialised_on_the_segment():
    w_a, w_b = _vectors(2)
    line = Line(w_a, w_b)
    assert torch.allclose(line.point(0.3), 0.7 * w_a + 0.3 * w_b, atol=1e-15)
    assert not list(line.parameters())
    for kind in ("bezier", "polychain"):
        c = make_curve(kind, w_a, w_b, 3)
        for i in range(5):
            assert torch.allclose(c.control(i), w_a + i / 4 * (w_b - w_a), atol=1e-15)
        names = [n for n, _ in c.named_parameters()]
        assert names == ["control_1", "control_2", "control_3"]
        assert {n for n, _ in c.named_buffers()} == {"control_0", "control_4"}
        assert len(list(make_curve(kind, w_a, w_b, 1, fix_endpoints=False).parameters())) == 3
    # a Bezier with bends on the segment is the line, reparametrised: every point lies on it
    c = make_curve("bezier", w_a, w_b, 2)
    d = c.points(T[:, None]) - w_a
    s = (d @ (w_b - w_a)) / (w_b - w_a).pow(2).sum()
    assert torch.allclose(d, s[:, None] * (w_b - w_a), atol=1e-12)
    with pytest.raises(LowlossError, match="bend"):
        make_curve("bezier", w_a, w_b, 0)
    with pytest.raises(LowlossError, match="same architecture"):
        make_curve("bezier", w_a, torch.zeros(3, dtype=torch.float64), 1)
    with pytest.raises(LowlossError, match="unknown curve"):
        make_curve("spline", w_a, w_b, 1)


def test_batched_points_equal_one_at_a_time():
    pts = _vectors(5, p=333, dtype=torch.float32)
    for cls in (Bezier, PolyChain):
        c = cls(pts, [False, True, True, True, False])
        ts = torch.rand(17, 1)
        batched = c.points(ts)
        single = torch.stack([c.point(float(t)) for t in ts[:, 0]])
        assert torch.equal(batched, single)
        assert torch.equal(c.points(ts[:, 0]), batched)  # [K] accepted as well as [K, 1]
    s = c.sample(1000, torch.Generator().manual_seed(0))
    assert s.shape == (1000, 1) and s.min() >= 0 and s.max() <= 1 and abs(s.mean().item() - 0.5) < 0.05


# ------------------------------------------------------------------------------------------ a custom module
class SmallBNNet(nn.Module):
    """Defined here, not in the zoo: a user's own module with BatchNorm."""

    def __init__(self, h=24):
        super().__init__()
        self.fc1 = nn.Linear(64, h)
        self.bn = nn.BatchNorm1d(h)
        self.fc2 = nn.Linear(h, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1)))))


def test_gradient_reaches_every_bend_through_the_coefficients(digits):
    torch.manual_seed(0)
    model = SmallBNNet().double()
    w_a = flatten(model).clone()
    w_b = flatten(SmallBNNet().double())
    curve = make_curve("bezier", w_a, w_b, 3)
    for i in (1, 2, 3):
        curve.set_control(i, curve.control(i) + 0.1 * torch.randn_like(curve.control(i)))
    x, y = digits.train.x[:50].double(), digits.train.y[:50]
    model.train()
    t = torch.tensor([[0.3]], dtype=torch.float64)
    loss, _ = subspace_loss(model, curve, x, y, t, wd=1e-3)
    loss.backward()
    # brute force: dL/dphi at phi(0.3), then dL/dp_i = a_i(0.3) dL/dphi
    phi = curve.point(0.3).detach().requires_grad_()
    ref = nn.functional.cross_entropy(functional_forward(model, phi, x), y) + 0.5e-3 * phi.pow(2).sum()
    (g,) = torch.autograd.grad(ref, phi)
    a = bezier_coefficients(t, 5)[0]
    for i in (1, 2, 3):
        grad = curve.control(i).grad
        assert grad is not None and grad.abs().sum() > 0
        assert torch.allclose(grad, a[i] * g, atol=1e-12)
    assert curve.control_0.grad is None  # endpoints are fixed buffers


def _train_mode(seed, data, epochs=8):
    """Two independent 'modes' of the custom module (plain SGD, no lowloss training code involved)."""
    torch.manual_seed(seed)
    model = SmallBNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, y in data.train.batches(64, shuffle=True, generator=g):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model


@pytest.fixture(scope="module")
def small(digits):
    """A fixed subset of digits: keeps every connect in this file to a few seconds on a loaded machine."""
    from lowloss.data import Dataset

    return Dataset("digits-small", digits.train.subset(480), digits.test.subset(200), digits.input_shape, 10)


@pytest.fixture(scope="module")
def two_modes(small):
    return _train_mode(1, small), _train_mode(2, small)


def test_connect_custom_module_midpoint_below_line(small, two_modes, tmp_path):
    a, b = two_modes
    model = SmallBNNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = C.connect(model, a, b, small, epochs=6, lr=0.05, points=5, quiet=True, out=tmp_path / "c", seed=0)
    ev = res.evaluation
    assert ev["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    mid_curve, mid_line = ev["curve"]["train_loss"][2], ev["line"]["train_loss"][2]
    assert mid_curve < mid_line, (mid_curve, mid_line)
    assert ev["summary"]["curve"]["barrier"] < ev["summary"]["line"]["barrier"]
    # fixed endpoints: t=0 and t=1 of the curve are the modes, evaluated identically to the line's ends
    for k in ("train_loss", "test_error", "ensemble_test_nll"):
        assert ev["curve"][k][0] == ev["line"][k][0] and ev["curve"][k][-1] == ev["line"][k][-1]
    assert ev["curve"]["train_loss"][0] == ev["endpoints"]["w_a"]["train_loss"]
    assert ev["line"]["ensemble_test_error"][-1] == ev["endpoint_ensemble"]["test_error"]
    assert torch.equal(res.curve.control(0), flatten(a)) and torch.equal(res.curve.control(2), flatten(b))
    # barrier is measured against the chord between the path's own ends
    lt = torch.tensor(ev["line"]["train_loss"], dtype=torch.float64)
    chord = (1 - torch.tensor(ev["t"], dtype=torch.float64)) * lt[0] + torch.tensor(ev["t"]) * lt[-1]
    assert ev["summary"]["line"]["barrier"] == pytest.approx(float((lt - chord).max()))
    assert ev["summary"]["line"]["max_train_loss"] == max(ev["line"]["train_loss"])
    # the user's module is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # files: run.json keys and the curve.safetensors format other tools read
    on_disk = json.loads((tmp_path / "c" / "run.json").read_text())
    assert on_disk == ev and on_disk["method"] == "connect"
    for path in ("curve", "line"):
        assert set(on_disk[path]) == set(C.PATH_KEYS) and all(len(v) == 5 for v in on_disk[path].values())
        assert set(on_disk["summary"][path]) == {"max_train_loss", "max_test_error", "barrier"}
    assert {"config", "versions", "timing", "endpoint_ensemble", "endpoints", "bn", "history", "runs"} <= set(on_disk)
    assert on_disk["config"]["epochs"] == 6 and on_disk["config"]["lr"] == 0.05 and "inputs" not in on_disk["config"]
    with safe_open(str(tmp_path / "c" / "curve.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["control_0", "control_1", "control_2"]
        assert f.get_tensor("control_1").shape == (flatten(a).numel(),)
        assert f.get_tensor("control_1").dtype == torch.float32
        meta = f.metadata()
    assert meta["curve"] == "bezier" and meta["num_bends"] == "1" and json.loads(meta["runs"]) == []
    assert not list((tmp_path / "c").glob("*.png"))  # methods draw nothing; the figures come from run.json
    assert [p.name for p in draw("connect", ev, tmp_path / "c")] == ["curve.png", "ensemble.png"]
    assert (tmp_path / "c" / "curve.png").stat().st_size > 0 and (tmp_path / "c" / "ensemble.png").exists()
    assert not (tmp_path / "c" / "checkpoint.safetensors").exists()
    assert "barrier" in C.summary(ev) and "ensemble {w_A, w_B}" in C.summary(ev)
    loaded = C.load_controls(tmp_path / "c")
    assert torch.equal(loaded.control(1), res.curve.control(1).detach())
    # a finished directory is not redone
    again = C.connect(model, a, b, small, config=C.Config(epochs=6, lr=0.05), points=5, quiet=True,
                      out=tmp_path / "c")
    assert again.evaluation == ev
    with pytest.raises(LowlossError, match="another config"):
        C.connect(model, a, b, small, epochs=7, lr=0.05, points=5, quiet=True, out=tmp_path / "c")
    with pytest.raises(LowlossError, match="has no field bend"):
        C.connect(model, a, b, small, bend=2, quiet=True)


def test_chunked_evaluation_equals_one_point_at_a_time(small, two_modes, monkeypatch):
    a, b = two_modes
    model = SmallBNNet()
    curve = make_curve("polychain", flatten(a), flatten(b), 1)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    probs_a = torch.full((len(small.test), 10), 0.1, dtype=torch.float64)
    labels = small.test.y
    whole = C.evaluate_path(model, curve, t, small, probs_a, labels)
    monkeypatch.setattr(C, "_chunk_size", lambda p, k: 1)
    single = C.evaluate_path(model, curve, t, small, probs_a, labels)
    for k in C.PATH_KEYS:
        assert whole[k] == pytest.approx(single[k], abs=1e-6), k


def test_dataloader_input_and_t_per_batch(small, two_modes):
    a, b = two_modes
    tr = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(small.train.x, small.train.y), batch_size=128,
                                     shuffle=True, generator=torch.Generator().manual_seed(0))
    te = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(small.test.x, small.test.y), batch_size=500)
    res = C.connect(SmallBNNet(), flatten(a), flatten(b), (tr, te), epochs=1, points=3, t_per_batch=4, quiet=True)
    assert len(res.evaluation["curve"]["test_error"]) == 3 and len(res.history) == 1
    assert res.evaluation["data"]["num_classes"] == 10
    with pytest.raises(LowlossError, match="test DataLoader"):
        C.connect(SmallBNNet(), flatten(a), flatten(b), tr, epochs=1, quiet=True)
    with pytest.raises(LowlossError, match="t-per-batch"):
        C.connect(SmallBNNet(), flatten(a), flatten(b), small, t_per_batch=0, quiet=True)
    with pytest.raises(LowlossError, match="trainable parameters"):
        C.connect(SmallBNNet(h=5), flatten(a), flatten(b), small, quiet=True)


def test_resume_equals_uninterrupted(small, two_modes, tmp_path, monkeypatch):
    a, b = two_modes
    kw = dict(epochs=2, points=4, quiet=True, seed=3, curve="polychain", bends=2)
    full = C.connect(SmallBNNet(), a, b, small, out=tmp_path / "full", **kw)

    # 1) interrupted right after epoch 1's checkpoint
    from lowloss.engine.train import Trainer

    orig_save = Trainer.save_checkpoint

    def save_then_stop(self):
        orig_save(self)
        if self.state.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        C.connect(SmallBNNet(), a, b, small, out=tmp_path / "part", **kw)
    monkeypatch.setattr(Trainer, "save_checkpoint", orig_save)
    with pytest.raises(LowlossError, match="--resume"):
        C.connect(SmallBNNet(), a, b, small, out=tmp_path / "part", **kw)

    # 2) resumed, then interrupted again during the path evaluation (after two chunks)
    monkeypatch.setattr(C, "_chunk_size", lambda p, k: 2)
    calls = {"n": 0}
    orig_eval = C.evaluate_vectors

    def eval_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # endpoints, curve chunk 1, curve chunk 2, then stop
            raise KeyboardInterrupt
        return orig_eval(*args, **kwargs)

    monkeypatch.setattr(C, "evaluate_vectors", eval_then_stop)
    with pytest.raises(KeyboardInterrupt):
        C.connect(SmallBNNet(), a, b, small, out=tmp_path / "part", resume=True, **kw)
    assert (tmp_path / "part" / C.PARTIAL_FILE).exists()
    monkeypatch.setattr(C, "evaluate_vectors", orig_eval)
    with pytest.raises(LowlossError, match="different config"):
        C.connect(SmallBNNet(), a, b, small, out=tmp_path / "part", resume=True, **{**kw, "epochs": 3})
    resumed = C.connect(SmallBNNet(), a, b, small, out=tmp_path / "part", resume=True, **kw)

    for i in range(4):
        assert torch.equal(full.curve.control(i), resumed.curve.control(i)), i
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    for path in ("curve", "line"):
        for k in C.PATH_KEYS:
            assert full.evaluation[path][k] == pytest.approx(resumed.evaluation[path][k], abs=1e-6), (path, k)
    assert not (tmp_path / "part" / C.PARTIAL_FILE).exists()


# ------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from lowloss.methods.train import Config as TrainConfig
    from lowloss.methods.train import train as train_mode

    root = tmp_path_factory.mktemp("runs")

    def mk(name, **kw):
        kw.setdefault("model_options", {"widths": "16"})
        cfg = TrainConfig(model="mlp", epochs=1, device="cpu", **kw)
        train_mode(cfg, root / name, quiet=True)
        return root / name

    return {"a": mk("a", seed=0), "b": mk("b", seed=1), "wide": mk("wide", seed=2, model_options={"widths": "20"}),
            "split": mk("split", seed=3, data_seed=1)}


def test_connect_runs_and_load_curve(tiny_runs, tmp_path, capsys):
    from lowloss.api import run
    from lowloss.cli import main

    out = tmp_path / "curve"
    main(["connect", str(tiny_runs["a"]), str(tiny_runs["b"]), "--out", str(out), "--epochs", "1", "--points", "3",
          "--device", "cpu"])
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}:") and "barrier" in printed and "ensemble {w_A, w_B}" in printed
    assert (out / "curve.png").exists() and (out / "ensemble.png").exists()
    res = run("connect", inputs=[tiny_runs["a"], tiny_runs["b"]], out=out, device="cpu", epochs=1, points=3,
              quiet=True)
    assert res == json.loads((out / "run.json").read_text())  # finished: loaded, not redone
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == C.Config().lr and config["inputs"] == [str(tiny_runs[k].resolve()) for k in "ab"]
    with safe_open(str(out / "curve.safetensors"), "pt") as f:
        runs = json.loads(f.metadata()["runs"])
    assert [str(p) for p in (tiny_runs["a"].resolve(), tiny_runs["b"].resolve())] == runs == res["runs"]
    assert C.curve_runs(out) == runs
    curve, run_a = C.load_curve(out)
    assert torch.equal(curve.control(0), run_a.vector) and run_a.path == tiny_runs["a"].resolve()
    assert isinstance(curve, Bezier) and curve.num_bends == 1
    loaded, _ = C.load(out)
    assert torch.equal(loaded.control(1), curve.control(1))
    with pytest.raises(LowlossError, match="expected a `lowloss connect` run"):
        C.load(tiny_runs["a"])


def test_mismatched_runs_are_a_clear_error(tiny_runs, tmp_path, capsys):
    from lowloss.cli import main
    from lowloss.rundir import run_method

    with pytest.raises(SystemExit) as e:
        main(["connect", str(tiny_runs["a"]), str(tiny_runs["wide"]), "--out", str(tmp_path / "v"), "-q"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "differ in architecture or data" in err and len(err.splitlines()) == 1
    cfg = C.Config(device="cpu")
    with pytest.raises(LowlossError, match="differ in architecture or data"):
        run_method(C, cfg, [tiny_runs["a"], tiny_runs["wide"]], tmp_path / "x", quiet=True)
    with pytest.raises(LowlossError, match="differ in architecture or data"):
        run_method(C, cfg, [tiny_runs["a"], tiny_runs["split"]], tmp_path / "y", quiet=True)
    with pytest.raises(LowlossError, match="identical weights"):
        run_method(C, cfg, [tiny_runs["a"], tiny_runs["a"]], tmp_path / "z", quiet=True)
    with pytest.raises(LowlossError, match="not a finished lowloss run"):
        run_method(C, cfg, [tiny_runs["a"], tmp_path], tmp_path / "w", quiet=True)
    with pytest.raises(LowlossError, match="--t-per-batch"):
        run_method(C, C.Config(t_per_batch=100), [tiny_runs["a"], tiny_runs["b"]], tmp_path / "u", quiet=True)
    assert not (tmp_path / "u").exists()  # a bad config is refused before anything is written


def test_top_level_connect_draws_the_figures(small, two_modes, tmp_path):
    import lowloss

    a, b = two_modes
    res = lowloss.connect(SmallBNNet(), a, b, small, out=tmp_path / "c", epochs=1, points=3, quiet=True)
    assert res.summary["curve"]["barrier"] == res.evaluation["summary"]["curve"]["barrier"]
    assert (tmp_path / "c" / "curve.png").stat().st_size > 0 and (tmp_path / "c" / "ensemble.png").exists()
