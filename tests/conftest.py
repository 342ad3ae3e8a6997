import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from lowloss.data import load_dataset

    return load_dataset("digits")


class TinyBN(torch.nn.Module):
    """A custom module (not from the zoo) with BatchNorm, used to check 'any nn.Module' claims."""

    def __init__(self, d_in=64, h=16, k=10):
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, h)
        self.bn = torch.nn.BatchNorm1d(h)
        self.fc2 = torch.nn.Linear(h, k)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1)))))


@pytest.fixture
def tiny_bn():
    torch.manual_seed(0)
    return TinyBN()


def tiny_plane_setup(seed=0, n_train=120, hidden=12, scale=0.5):
    """Float64 tiny BN network on a slice of the digits and three nearby points (the network's weights and two
    seeded random offsets of size `scale`): the inputs of plane tests. Returns (model, data, points)."""
    from lowloss.data import Dataset, TensorSplit, load_dataset
    from lowloss.params import flatten

    d = load_dataset("digits")
    data = Dataset("digits-small", TensorSplit(d.train.x[:n_train].double(), d.train.y[:n_train]),
                   TensorSplit(d.test.x[:40].double(), d.test.y[:40]), d.input_shape, 10)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.BatchNorm1d(hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 10)).double()
    w = flatten(model)
    g = torch.Generator().manual_seed(1)
    pts = [w, w + scale * torch.randn(w.numel(), generator=g, dtype=w.dtype),
           w + scale * torch.randn(w.numel(), generator=g, dtype=w.dtype)]
    return model, data, pts


def train_tiny_mlps(root, widths, epochs, seeds=(0, 1)):
    """Tiny digits MLP modes root/m<seed> (CPU, quiet): inputs of alignment and simplex tests."""
    from lowloss.methods.train import Config, train

    for s in seeds:
        train(Config(model="mlp", model_options={"widths": widths}, epochs=epochs, device="cpu", seed=s),
              root / f"m{s}", quiet=True)
    return [root / f"m{s}" for s in seeds]
