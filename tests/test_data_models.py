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


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"wrn28x10", "preresnet164", "preresnet110", "convnet1d"}))
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


def test_mnist1d_is_generated_locally_and_equals_make_dataset(monkeypatch):
    import mnist1d.data as m1d
    from mnist1d.utils import ObjectView

    import lowloss.data as D

    monkeypatch.setattr(m1d, "get_dataset", lambda *a, **k: pytest.fail("MNIST-1D must never be downloaded"))
    d = load_dataset("mnist1d")
    assert (len(d.train), len(d.test), d.input_shape, d.num_classes) == (4000, 1000, (1, 40), 10)
    ref = m1d.make_dataset(ObjectView({**m1d.get_dataset_args(as_dict=True)}))
    assert np.allclose(d.train.x[:, 0].numpy(), ref["x"], atol=1e-5) and np.array_equal(d.test.y.numpy(), ref["y_test"])
    state = np.random.get_state()[1].copy()
    D.mnist1d_raw(D.mnist1d_args(), 7, n=20)
    assert np.array_equal(state, np.random.get_state()[1]), "the global random state was touched"
    assert "url" not in D.mnist1d_args()


def test_convnet1d_and_mlp_suit_signals():
    for name in ("convnet1d", "mlp"):
        net = build_model(name, (1, 40), 10)
        assert net(torch.zeros(5, 1, 40)).shape == (5, 10)
    with pytest.raises(Exception, match="signals"):
        build_model("convnet1d", (1, 8, 8), 10)
