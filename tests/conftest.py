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
