import copy

import pytest
import torch

from lowloss import params as P
from lowloss.models import build_model
from lowloss.utils import LowlossError


@pytest.mark.parametrize("name", ["mlp", "convnet", "lenet5"])
def test_functional_forward_equals_module_forward(name, digits):
    torch.manual_seed(0)
    model = build_model(name, digits.input_shape, 10).eval()
    x = digits.test.x[:32]
    with torch.no_grad():
        ref = model(x)
        out = P.functional_forward(model, P.flatten(model), x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_flatten_unflatten_roundtrip():
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), 10)
    v = P.flatten(model)
    assert v.numel() == sum(p.numel() for p in model.parameters())
    named = P.unflatten(v, model)
    for n, p in model.named_parameters():
        assert torch.equal(named[n], p.detach())
    torch.testing.assert_close(P.flatten(named), v, rtol=0, atol=0)
    # unflatten gives views: gradients reach the vector
    w = v.clone().requires_grad_(True)
    out = P.functional_forward(model, w, torch.randn(4, 1, 8, 8)).sum()
    out.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_functional_forward_at_other_vector_does_not_mutate(tiny_bn):
    before = copy.deepcopy(tiny_bn.state_dict())
    v = P.flatten(tiny_bn) + 1.0
    tiny_bn.train()
    P.functional_forward(tiny_bn, v, torch.randn(8, 64))
    for k, t in tiny_bn.state_dict().items():
        assert torch.equal(t, before[k]), k


def test_batched_vector_shape_mismatch_is_clear(tiny_bn):
    with pytest.raises(LowlossError, match="different architecture"):
        P.unflatten(torch.zeros(3), tiny_bn)


def test_bn_recompute_reproduces_a_pass_over_the_data(digits):
    torch.manual_seed(0)
    model = build_model("convnet", digits.input_shape, 10)
    v = P.flatten(model)
    before = copy.deepcopy(model.state_dict())
    bufs = P.recompute_bn(model, v, digits.train.batches(200))
    # the module is untouched
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k])
    # reference: reset stats, momentum=None, one pass in train mode with the module itself
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        for x, _ in digits.train.batches(200):
            ref(x)
    for k, t in ref.state_dict().items():
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(bufs[k], t, rtol=1e-5, atol=1e-6)


def test_bn_recompute_single_batch_gives_exact_statistics(tiny_bn):
    x = torch.randn(500, 64, dtype=torch.float64)
    model = tiny_bn.double()
    bufs = P.recompute_bn(model, P.flatten(model), [x])
    h = model.fc1(x).detach()
    torch.testing.assert_close(bufs["bn.running_mean"], h.mean(0))
    torch.testing.assert_close(bufs["bn.running_var"], h.var(0, unbiased=True))


def test_recompute_bn_skips_models_without_bn():
    model = build_model("mlp", (1, 8, 8), 10)
    calls = []

    def batches():
        calls.append(1)
        yield torch.zeros(2, 1, 8, 8), None

    P.recompute_bn(model, P.flatten(model), batches())
    assert calls == []


def test_custom_forward_for_dict_inputs():
    class DictModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, a, b):
            return self.lin(a) + b

    m = DictModel()
    x = {"a": torch.randn(4, 3), "b": torch.randn(4, 2)}
    v = P.flatten(m) * 2
    out = P.functional_forward(m, v, x, forward=lambda mod, inp: mod(**inp))
    ref = torch.nn.functional.linear(x["a"], m.lin.weight * 2, m.lin.bias * 2) + x["b"]
    torch.testing.assert_close(out, ref)
    assert torch.equal(P.flatten(m), v / 2)


def test_zero_dim_parameters_roundtrip():
    class Scalar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.scale * self.lin(x)

    m = Scalar()
    named = P.unflatten(P.flatten(m), m)
    assert named["scale"].shape == () and named["scale"].item() == 2.0
    x = torch.randn(4, 3)
    torch.testing.assert_close(P.functional_forward(m, P.flatten(m), x), m(x))
