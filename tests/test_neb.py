"""AutoNEB: the NEB force from one backward pass, pivot insertion, gradient-evaluation counts, `connect --method neb`."""

import json

import pytest
import torch
from torch import nn

from lowloss import params as P
from lowloss.subspaces.neb import NEBConfig, _Band, auto_neb, neb_loss


def _toy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    return model, x, y


def test_surrogate_gradient_is_minus_the_neb_force():
    model, x, y = _toy()
    n = P.num_params(model)
    g = torch.Generator().manual_seed(1)
    pts = [torch.randn(n, generator=g) for _ in range(5)]
    band = _Band(pts)
    k, wd = 0.7, 1e-2
    value, _ = neb_loss(model, band, x, y, spring=k, wd=wd)
    value.backward()
    energies = []
    for i in range(1, 4):
        p = pts[i].clone().requires_grad_(True)
        e = nn.functional.cross_entropy(P.functional_forward(model, p, x), y) + 0.5 * wd * p @ p
        (grad,) = torch.autograd.grad(e, p)
        tau = (pts[i + 1] - pts[i - 1]) / (pts[i + 1] - pts[i - 1]).norm()
        spring = k * ((pts[i + 1] - pts[i]).norm() - (pts[i] - pts[i - 1]).norm()) * tau
        force = -(grad - (grad @ tau) * tau) + spring
        assert torch.allclose(band.inner[i - 1].grad, -force, atol=1e-6)
        energies.append(float(e.detach()))
    assert float(value.detach()) == pytest.approx(sum(energies) / 3, rel=1e-6)


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    from lowloss.methods.train import Config, train

    root = tmp_path_factory.mktemp("neb")
    for s in (0, 1):
        train(Config(model="mlp", model_options={"widths": "16"}, epochs=1, device="cpu", seed=s), root / f"m{s}",
              quiet=True)
    return root


def test_auto_neb_inserts_pivots_counts_gradients_and_keeps_endpoints(modes):
    from lowloss.rundir import load_runs

    a, b = load_runs([modes / "m0", modes / "m1"], device="cpu")
    cfg = NEBConfig(pivots=1, rounds=3, insert=2, epochs=1, batch_size=256, points_per_segment=3)
    res = auto_neb(a.model, a.vector, b.vector, a.data, cfg, generator=torch.Generator().manual_seed(0), quiet=True)
    nb = a.data.train.num_batches(256)
    assert [r["pivots"] for r in res.rounds] == [1, 3, 5] and len(res.pivots) == 7
    assert res.gradient_evaluations == nb * (1 + 3 + 5)
    assert torch.equal(res.pivots[0], a.vector) and torch.equal(res.pivots[-1], b.vector)
    assert res.rounds[-1]["barrier"] < res.rounds[0]["barrier"] or res.rounds[-1]["barrier"] == 0.0
    chain = res.chain()
    assert chain.kind == "polychain" and torch.equal(chain.point(0.5), res.pivots[3])
    again = auto_neb(a.model, a.vector, b.vector, a.data, cfg, generator=torch.Generator().manual_seed(0), quiet=True)
    assert all(torch.equal(p, q) for p, q in zip(res.pivots, again.pivots))  # seeded: reproducible


def test_connect_method_neb_writes_a_connect_run(modes, tmp_path):
    from lowloss.api import run
    from lowloss.methods.connect import load

    out = tmp_path / "neb"
    res = run("connect", inputs=[modes / "m0", modes / "m1"], out=out, device="cpu", method="neb", epochs=2,
              neb_rounds=2, neb_pivots=1, neb_insert=1, batch_size=256, points=5, quiet=True)
    assert res["cost"]["pivots"] == 2 and res["cost"]["gradient_evaluations"] == 6 * (1 + 2)
    assert res["summary"]["curve"]["barrier"] < res["summary"]["line"]["barrier"]
    assert (out / "curve.png").exists() and not (out / "neb_state.safetensors").exists()
    curve, _ = load(out)
    assert curve.kind == "polychain" and curve.num_bends == 2
    assert json.loads((out / "run.json").read_text())["config"]["method"] == "neb"
    plain = run("connect", inputs=[modes / "m0", modes / "m1"], out=tmp_path / "c", device="cpu", epochs=1,
                batch_size=256, points=3, quiet=True)
    assert plain["cost"]["gradient_evaluations"] == 6


def test_bad_neb_options_are_one_line_errors(modes, tmp_path):
    from lowloss.api import run
    from lowloss.errors import LowlossError

    with pytest.raises(LowlossError, match="--neb-pivots"):
        run("connect", inputs=[modes / "m0", modes / "m1"], out=tmp_path / "x", method="neb", neb_rounds=0,
            quiet=True)
    assert not (tmp_path / "x").exists()
