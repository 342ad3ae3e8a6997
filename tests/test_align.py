"""Permutation symmetries found by tracing (lowloss.permute), weight matching and `lowloss align`."""

import json

import pytest
import torch
from torch import nn

from conftest import train_tiny_mlps
from lowloss.errors import LowlossError
from lowloss.models import build_model
from lowloss.permute import apply_permutation, matching_objective, permutation_spec, weight_matching

ZOO = [("mlp", (1, 8, 8), {"widths": "12,10"}), ("mlp", (1, 8, 8), {"widths": "12", "bn": True}),
       ("convnet", (1, 8, 8), {"width": 0.25}), ("convnet1d", (1, 20), {"width": 0.25}),
       ("lenet5", (1, 8, 8), {}), ("preresnet20", (3, 8, 8), {"width": 0.5})]


def _net(name, shape, opts, seed):
    torch.manual_seed(seed)
    m = build_model(name, shape, 10, opts)
    with torch.no_grad():
        for k, v in m.state_dict().items():  # non-trivial BN statistics, so that forgetting one shows
            if k.endswith("running_mean"):
                v.normal_()
            elif k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("bias"):
                v.normal_(0, 0.1)
    return m.eval()


def _random_perms(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randperm(n, generator=g) for k, n in spec.sizes.items()}


@pytest.mark.parametrize("name,shape,opts", ZOO)
def test_any_permutation_keeps_the_function(name, shape, opts):
    net = _net(name, shape, opts, 0)
    spec = permutation_spec(net, shape)
    perms = _random_perms(spec)
    assert all((p != torch.arange(len(p))).any() for p in perms.values())
    other = _net(name, shape, opts, 1)
    other.load_state_dict(apply_permutation(spec, net.state_dict(), perms))
    x = torch.randn(7, *shape)
    with torch.no_grad():
        assert torch.allclose(net(x), other(x), atol=1e-5, rtol=1e-5)
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, other.state_dict()[k])]
    assert changed  # the weights did move


def test_groups_follow_flatten_batchnorm_and_residual_adds():
    lenet = permutation_spec(_net("lenet5", (1, 8, 8), {}, 0), (1, 8, 8))
    fc = lenet.axes["classifier.0.weight"]  # conv channels expanded over the 2x2 positions after flatten
    assert fc.view == (120, 16, 4) and fc.groups[1] == lenet.axes["features.3.weight"].groups[0]
    assert lenet.axes["classifier.4.weight"].groups == (None, lenet.axes["classifier.2.weight"].groups[0])
    conv = permutation_spec(_net("convnet", (1, 8, 8), {"width": 0.25}, 0), (1, 8, 8))
    g = conv.axes["features.0.weight"].groups[0]
    assert all(conv.axes[f"features.1.{k}"].groups == (g,) for k in ("weight", "bias", "running_mean", "running_var"))
    res = permutation_spec(_net("preresnet20", (3, 8, 8), {"width": 0.5}, 0), (3, 8, 8))
    # the stem conv and every block's second conv of stage 1 add into one residual stream: one group
    stream = res.axes["conv.weight"].groups[0]
    assert {res.axes[f"layers.{i}.conv2.weight"].groups[0] for i in range(3)} == {stream}
    assert res.axes["layers.0.conv1.weight"].groups[0] != stream
    assert len(res.sizes) == 3 + 9  # three residual streams, one inner group per block


def test_weight_matching_recovers_a_hidden_permutation():
    for name, shape, opts in (ZOO[0], ZOO[2], ZOO[4]):
        a = _net(name, shape, opts, 0)
        spec = permutation_spec(a, shape)
        b_state = apply_permutation(spec, a.state_dict(), _random_perms(spec, 3))
        perms, info = weight_matching(spec, a.state_dict(), b_state, seed=0)
        back = apply_permutation(spec, b_state, perms)
        assert all(torch.equal(back[k], v) for k, v in a.state_dict().items()), name
        assert info["objective_after"] == pytest.approx(matching_objective(spec, a.state_dict(), a.state_dict(),
                                                                           {g: torch.arange(n) for g, n in
                                                                            spec.sizes.items()}))
        assert info["objective_after"] > info["objective_before"]


def test_weight_matching_is_seeded_and_never_worse():
    a, b = _net("mlp", (1, 8, 8), {"widths": "12,10"}, 0), _net("mlp", (1, 8, 8), {"widths": "12,10"}, 1)
    spec = permutation_spec(a, (1, 8, 8))
    p1, i1 = weight_matching(spec, a.state_dict(), b.state_dict(), seed=5)
    p2, i2 = weight_matching(spec, a.state_dict(), b.state_dict(), seed=5)
    assert all(torch.equal(p1[g], p2[g]) for g in p1) and i1 == i2
    assert i1["objective_after"] >= i1["objective_before"]


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], 1))


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, groups=2)

    def forward(self, x):
        return self.c(x).mean((2, 3))


class _Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 2)

    def forward(self, x):
        return self.l(x) if x.sum() > 0 else -self.l(x)


@pytest.mark.parametrize("module,shape,words", [(_Cat(), (4,), "cat"), (_Grouped(), (2, 5, 5), "groups=2"),
                                                (_Dynamic(), (4,), "torch.fx cannot trace")])
def test_unsupported_graphs_are_one_line_errors(module, shape, words):
    with pytest.raises(LowlossError) as e:
        permutation_spec(module, shape)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    train_tiny_mlps(root, "24,24", epochs=2)
    return root


def test_align_writes_a_loadable_run_with_the_same_function(two_runs, tmp_path):
    from lowloss.api import run
    from lowloss.engine.evaluate import predict_logits
    from lowloss.rundir import load_run

    out = tmp_path / "aligned"
    res = run("align", inputs=[two_runs / "m0", two_runs / "m1"], out=out, device="cpu", points=5, quiet=True)
    assert (out / "line.png").exists() and res["max_logit_difference"] < 1e-4
    b, al = load_run(two_runs / "m1"), load_run(out)
    lb, _ = predict_logits(b.model, b.vector, b.data.test, bufs=b.buffers)
    la, _ = predict_logits(al.model, al.vector, al.data.test, bufs=al.buffers)
    assert torch.allclose(lb, la, atol=1e-4) and not torch.equal(b.vector, al.vector)
    s = res["summary"]
    assert s["barrier_after"] < s["barrier_before"]
    assert res["line"]["after"]["train_loss"][-1] == pytest.approx(res["line"]["before"]["train_loss"][-1], abs=1e-4)
    # the aligned run is an input run like any other
    c = run("connect", inputs=[two_runs / "m0", out], out=tmp_path / "c", device="cpu", epochs=0, points=3,
            quiet=True)
    assert c["summary"]["line"]["barrier"] == pytest.approx(res["line"]["after"]["barrier"], abs=1e-6)


def test_connect_align_connects_a_with_the_aligned_b(two_runs, tmp_path):
    from lowloss.api import run

    c = run("connect", inputs=[two_runs / "m0", two_runs / "m1"], out=tmp_path / "c", device="cpu", epochs=0,
            points=3, align=True, quiet=True)
    plain = run("connect", inputs=[two_runs / "m0", two_runs / "m1"], out=tmp_path / "p", device="cpu", epochs=0,
                points=3, quiet=True)
    assert json.loads((tmp_path / "c" / "run.json").read_text())["config"]["align"] is True
    assert c["alignment"]["groups"] == 2
    assert c["summary"]["line"]["barrier"] < plain["summary"]["line"]["barrier"]
    assert c["endpoints"]["w_b"]["test_loss"] == pytest.approx(plain["endpoints"]["w_b"]["test_loss"], abs=1e-5)
    assert c["cost"]["gradient_evaluations"] == 0


def test_align_refuses_different_architectures(two_runs, tmp_path):
    from lowloss.api import run
    from lowloss.methods.train import Config, train

    train(Config(model="mlp", model_options={"widths": "8"}, epochs=1, device="cpu"), tmp_path / "mlp", quiet=True)
    with pytest.raises(LowlossError, match="differ in architecture"):
        run("align", inputs=[two_runs / "m0", tmp_path / "mlp"], out=tmp_path / "x", device="cpu", quiet=True)
    assert not (tmp_path / "x").exists()
