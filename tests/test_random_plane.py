"""Random-direction planes (Li et al. 2018): filter normalisation, seeded directions, the plane and its 1-D slice."""

import numpy as np
import pytest
import torch

from lowloss.api import run
from lowloss.engine.evaluate import evaluate_vectors
from lowloss.methods import plane as PL
from lowloss.methods.plane_inputs import (
    filter_normalize,
    gaussian_directions,
    random_plane_directions,
    symmetric_axis,
)
from lowloss.params import ParamLayout, flatten
from lowloss.rundir import load_run
from lowloss.utils import LowlossError


def _conv_bn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)).double()


def test_filter_normalisation_closed_form():
    model = _conv_bn()
    layout = ParamLayout.of(model)
    w = flatten(model)
    d = gaussian_directions(3, layout.size, seed=7)
    fd = filter_normalize(d, w, layout)
    assert fd.shape == d.shape and fd.dtype == d.dtype
    for k in range(3):
        views, wv = layout.unflatten(fd[k]), layout.unflatten(w)
        for name, t in views.items():
            if t.dim() >= 2:  # each filter / neuron: the norm of the weights' same filter, the direction of d's
                rows_d, rows_w = t.reshape(t.shape[0], -1), wv[name].reshape(t.shape[0], -1)
                torch.testing.assert_close(rows_d.norm(dim=1), rows_w.norm(dim=1), rtol=1e-12, atol=0)
                raw = layout.unflatten(d[k])[name].reshape(t.shape[0], -1)
                cos = (rows_d * raw).sum(1) / (rows_d.norm(dim=1) * raw.norm(dim=1))
                torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-12)
            else:  # biases and BN scale / shift: zero direction
                assert torch.count_nonzero(t) == 0, name
        torch.testing.assert_close(filter_normalize(d[k], w, layout), fd[k], rtol=0, atol=0)


def test_same_seed_same_directions_and_scaling():
    model = _conv_bn()
    layout, w = ParamLayout.of(model), flatten(model)
    a = random_plane_directions(w, layout, 3, filter_norm=True)
    b = random_plane_directions(w, layout, 3, filter_norm=True)
    c = random_plane_directions(w, layout, 4, filter_norm=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = random_plane_directions(w, layout, 3, filter_norm=False)
    torch.testing.assert_close(g.norm(dim=1), w.norm().expand(2), rtol=1e-12, atol=0)
    # the same Gaussian draw underlies both normalisations: filter-normalising the global one gives the same
    torch.testing.assert_close(filter_normalize(g, w, layout), a, rtol=1e-12, atol=1e-14)
    ax = symmetric_axis(0.7, 5)
    assert ax[2] == 0.0 and ax[0] == -0.7 and np.array_equal(ax, -ax[::-1])


@pytest.fixture(scope="module")
def mode(tmp_path_factory):
    out = tmp_path_factory.mktemp("rp") / "m0"
    run("train", out=out, model="mlp", model_options={"widths": "16", "bn": "true"}, epochs=1, seed=0, quiet=True,
        device="cpu")
    return out


def test_random_plane_origin_is_the_run_and_slice_is_its_row(mode, tmp_path):
    res = run("plane", inputs=[str(mode)], out=tmp_path / "p2", random=True, filter_norm=True, grid=3, span=0.5,
              metrics="train_loss,test_error", quiet=True, seed=1, device="cpu")
    z = PL.load(tmp_path / "p2")
    r = load_run(mode, device="cpu")
    assert z["train_loss"].shape == (3, 3) and z["y"][1] == 0.0 and z["x"][1] == 0.0
    assert torch.equal(z["basis"]["origin"], r.vector)  # (0, 0) is the run's weights, exactly
    own = evaluate_vectors(r.model, r.vector.unsqueeze(0), r.data, splits=("train", "test"))
    assert z["train_loss"][1, 1] == pytest.approx(float(own["train_loss"][0]), rel=1e-6)
    assert z["test_error"][1, 1] == pytest.approx(float(own["test_error"][0]), abs=1e-12)
    pt = res["points"][mode.name]
    assert pt["coords"] == [0.0, 0.0] and pt["train_loss"] == pytest.approx(z["train_loss"][1, 1], rel=1e-6)
    assert res["sources"]["random"]["filter_norm"] is True
    assert (tmp_path / "p2" / "plane_train_loss.png").exists()
    # a grid point is w + x d1 + y d2 with the directions recorded in the basis
    d = random_plane_directions(r.vector, ParamLayout.of(r.model), 1, filter_norm=True)
    torch.testing.assert_close(z["basis"]["u"], d[0], rtol=0, atol=0)

    res1 = run("plane", inputs=[str(mode)], out=tmp_path / "p1", random=True, filter_norm=True, grid=3, span=0.5,
               dim=1, metrics="train_loss,test_error", quiet=True, seed=1, device="cpu", plots=False)
    z1 = PL.load(tmp_path / "p1")
    assert z1["train_loss"].shape == (1, 3) and list(z1["y"]) == [0.0]
    np.testing.assert_allclose(z1["train_loss"][0], z["train_loss"][1], rtol=1e-6)
    from lowloss.plots.width import draw_slice

    assert draw_slice(res1, tmp_path / "p1")[0].exists()


def test_random_plane_bad_inputs(mode, tmp_path):
    with pytest.raises(LowlossError, match="exactly one run"):
        run("plane", inputs=[str(mode)] * 3, out=tmp_path / "x", random=True, quiet=True)
    with pytest.raises(LowlossError, match="--filter-norm only applies with --random"):
        run("plane", inputs=[str(mode)] * 3, out=tmp_path / "x", filter_norm=True, quiet=True)
    with pytest.raises(LowlossError, match="--dim must be 1 or 2"):
        run("plane", inputs=[str(mode)], out=tmp_path / "x", random=True, dim=3, quiet=True)
    with pytest.raises(LowlossError, match="--span must be positive"):
        run("plane", inputs=[str(mode)], out=tmp_path / "x", random=True, span=0.0, quiet=True)
    with pytest.raises(LowlossError, match="not --curve"):
        run("plane", out=tmp_path / "x", random=True, curve=str(mode), quiet=True)
    with pytest.raises(LowlossError, match="--dim 1 only applies"):
        run("plane", inputs=[str(mode)] * 3, out=tmp_path / "x", dim=1, quiet=True)
    assert not (tmp_path / "x").exists()
