"""SPRO / ESPRO on tiny models: positive volume, fixed modes untouched, exact resume, run-dir format."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from lowloss.data import Dataset
from lowloss.methods.spro import (
    SproConfig,
    grow_complex,
    random_init_vector,
    regularisation_scale,
    save_complex,
)
from lowloss.params import flatten
from lowloss.subspaces.simplex import Complex


@pytest.fixture
def tiny_data(digits):
    return Dataset("digits-tiny", digits.train.subset(64), digits.test.subset(32), digits.input_shape,
                   digits.num_classes)


CFG = SproConfig(epochs=2, lr=0.05, lmbda=1e-2, samples=2, batch_size=32)
CFG1 = SproConfig(epochs=1, lr=0.05, lmbda=1e-2, samples=2, batch_size=32)


def test_tiny_spro_keeps_volume_positive_and_modes_fixed(tiny_bn, tiny_data):
    mode = flatten(tiny_bn).clone()
    state = {k: v.clone() for k, v in tiny_bn.state_dict().items()}
    res = grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG1, seed=0, quiet=True)
    c = res.complex
    assert c.num_vertices == 3 and c.simplexes == [(0, 1, 2)]
    assert torch.equal(c.control(0), mode)                       # the mode stays fixed
    assert all(math.isfinite(lg["log_volume"]) for lg in res.logs)  # volume > 0 after every vertex
    assert math.isfinite(c.log_volume().item())
    assert [lg["vertex"] for lg in res.logs] == [1, 2]
    assert all(len(lg["history"]) == 1 and lg["lambda"] > 0 for lg in res.logs)
    # the user's module is never written to
    assert all(torch.equal(v, tiny_bn.state_dict()[k]) for k, v in state.items())


def test_tiny_spro_resumes_exactly(tiny_bn, tiny_data, tmp_path):
    mode = flatten(tiny_bn).clone()
    full = grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG, seed=3, out=tmp_path / "a", quiet=True)

    class Stop(Exception):
        pass

    def interrupt(vertex, epoch):
        if vertex == 2 and epoch == 2:
            raise Stop
        return {}

    with pytest.raises(Stop):
        grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG, seed=3, out=tmp_path / "b", quiet=True,
                     after_epoch=interrupt)
    assert (tmp_path / "b" / "progress.safetensors").exists()          # vertex 1 finished and saved
    assert (tmp_path / "b" / "vertex_2" / "checkpoint.safetensors").exists()  # vertex 2 mid-way
    resumed = grow_complex(tiny_bn, tiny_data, [mode], [(0, 1, 2)], 2, CFG, seed=3, out=tmp_path / "b",
                           resume=True, quiet=True)
    for i in range(3):
        assert torch.equal(full.complex.control(i), resumed.complex.control(i))
    assert [lg["history"] for lg in full.logs] == [lg["history"] for lg in resumed.logs]


def test_regularisation_scale_and_random_init(tiny_bn):
    before = {k: v.clone() for k, v in tiny_bn.state_dict().items()}
    a, b = random_init_vector(tiny_bn, 1), random_init_vector(tiny_bn, 1)
    assert torch.equal(a, b) and not torch.equal(a, random_init_vector(tiny_bn, 2))
    assert not torch.equal(a, flatten(tiny_bn))
    assert all(torch.equal(v, tiny_bn.state_dict()[k]) for k, v in before.items())
    lam, log_term = regularisation_scale(tiny_bn, [(0, 1, 2)], 3, 1e-2, seed=5)
    rand = Complex([random_init_vector(tiny_bn, 5 * 1009 + j) for j in range(3)], [(0, 1, 2)])
    want = math.log(math.exp(2 * rand.log_volume().item()) + 1e-4)
    assert log_term == pytest.approx(want, rel=1e-9)
    assert lam == pytest.approx(max(1e-2 / want, 1e-8))


def test_save_complex_format(tmp_path):
    c = Complex([torch.zeros(5), torch.ones(5), torch.arange(5.0)], [(0, 1, 2)], trainable=[False, True, True])
    save_complex(tmp_path / "simplex.safetensors", c, [tmp_path / "run"])
    with safe_open(str(tmp_path / "simplex.safetensors"), "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["vertex_0", "vertex_1", "vertex_2"]
        assert f.get_tensor("vertex_2").shape == (5,)
    assert json.loads(meta["simplexes"]) == [[0, 1, 2]]
    assert json.loads(meta["fixed"]) == [True, False, False]
    assert json.loads(meta["base_runs"]) == [str((tmp_path / "run").resolve())]


@pytest.mark.slow
def test_espro_run_dir_end_to_end(tmp_path):
    from lowloss.methods.predictor import load_predictor
    from lowloss.methods.spro import espro_simplex, load_complex
    from lowloss.methods.train import Config as TrainConfig
    from lowloss.methods.train import train as train_mode

    train_mode(TrainConfig(model="mlp", epochs=2, device="cpu"), tmp_path / "m", quiet=True)
    res = espro_simplex(tmp_path / "m", tmp_path / "s", vertices=3, cfg=SproConfig(epochs=1, samples=2),
                        members=3, device="cpu", quiet=True)
    assert len(res["log_volume"]) == 2 and all(math.isfinite(v) for v in res["log_volume"])
    assert set(res["test"]) == {"mode", "sample_mean", "ensemble"}
    assert set(res["test"]["ensemble"]) == {"accuracy", "nll", "ece", "brier"}
    cplx, run = load_complex(tmp_path / "s", device="cpu")
    assert torch.equal(cplx.control(0), run.vector)
    pred = load_predictor(tmp_path / "s", device="cpu", members=4)
    assert len(pred) == 4
    probs, y = pred.predict_probs(run.data.test)
    assert probs.shape == (len(y), 10)


def test_relative_height_closed_forms():
    from lowloss.methods.spro import relative_height

    v = torch.eye(4, dtype=torch.float64) * 3.0
    # regular tetrahedron: height a sqrt(4/6), RMS edge a
    assert relative_height(Complex(list(v), [(0, 1, 2, 3)])) == pytest.approx(math.sqrt(2 / 3), rel=1e-9)
    flat = list(v[:3]) + [v[:3].mean(0)]
    assert relative_height(Complex(flat, [(0, 1, 2, 3)])) == 0.0


def test_mds_layout_and_faces():
    import numpy as np

    from lowloss.plots.simplex import faces, mds_layout
    from lowloss.subspaces.simplex import pairwise_sq_dists

    g = torch.Generator().manual_seed(0)
    pts = torch.randn(3, 40, generator=g, dtype=torch.float64)  # three points span a plane: MDS is exact
    d = pairwise_sq_dists(pts).numpy()
    xy = mds_layout(d)
    d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    assert np.allclose(d2, d, atol=1e-9)
    assert faces([(0, 2, 3), (1, 2, 3)]) == [(0, 2, 3), (1, 2, 3)]
    assert faces([(0, 1, 2, 3)]) == [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]
