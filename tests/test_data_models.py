import numpy as np
import pytest
import torch

from lowloss.data import load_dataset, stratified_split
from lowloss.models import MODELS, build_model


def test_digits_split():
    d = load_dataset("digits")
    assert (len(d.train), len(d.test)) == (1437, 360)
    assert d.train.x.shape[1:] == (1, 8, 8) and d.train.x.dtype == torch.float32
    counts = torch.bincount(d.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    assert abs(d.train.x.mean().item()) < 1e-4  # scaling fitted on train
    d2 = load_dataset("digits")
    assert torch.equal(d.train.x, d2.train.x)


def test_mnist5k():
    d = load_dataset("mnist5k")
    assert (len(d.train), len(d.test)) == (4000, 1000)
    assert d.train.x.shape[1:] == (1, 28, 28)
    assert torch.bincount(d.test.y).tolist() == [100] * 10


def test_synthetic_sets_are_deterministic():
    for name in ("spirals", "regression1d"):
        a, b = load_dataset(name, seed=3), load_dataset(name, seed=3)
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
        c = load_dataset(name, seed=4)
        assert not torch.equal(a.train.x, c.train.x)


def test_stratified_split_sizes():
    y = np.repeat(np.arange(3), [10, 20, 30])
    tr, te = stratified_split(y, 12, 0)
    assert len(te) == 12 and len(tr) == 48 and np.bincount(y[te]).tolist() == [2, 4, 6]


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"wrn28x10", "preresnet164", "preresnet110"}))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_zoo_adapts_to_input(name, shape):
    torch.manual_seed(0)
    m = build_model(name, shape, 7).eval()
    with torch.no_grad():
        assert m(torch.randn(2, *shape)).shape == (2, 7)


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def make(input_shape, num_classes, hidden=5):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.Linear(hidden, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("mymodels:make", (1, 8, 8), 10, {"hidden": 3})
    assert m[1].out_features == 3
