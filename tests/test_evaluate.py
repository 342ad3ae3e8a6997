"""The evaluation engine equals the plain per-vector loop, whatever the chunking, method or device plan."""

import pytest
import torch

from lowloss import params as P
from lowloss.data import Dataset, TensorSplit
from lowloss.engine.evaluate import evaluate_vectors, plan_chunks


def _small(digits, n_train=160, n_test=60) -> Dataset:
    """A float64 copy of a slice of digits (fast, and exact comparisons)."""
    tr, te = digits.train, digits.test
    return Dataset("digits-small", TensorSplit(tr.x[:n_train].double(), tr.y[:n_train]),
                   TensorSplit(te.x[:n_test].double(), te.y[:n_test]), digits.input_shape, 10)


class SmallConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 16, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.nn.functional.max_pool2d(h, 2).flatten(1))


def plain_loop(model, vectors, data, batch_size, bn_subset=None):
    """The obvious reference in float64: per vector, recompute BN (cumulative average over batches of
    `batch_size`), then the mean NLL and error of each split, one example at a time in spirit."""
    rows = []
    for v in vectors:
        bufs = None
        if P.has_batchnorm(model):
            split = data.train.subset(bn_subset) if bn_subset else data.train
            bufs = P.recompute_bn(model, v, split.batches(batch_size))
        row = []
        was = model.training
        model.eval()
        for s in ("train", "test"):
            sp = getattr(data, s)
            with torch.no_grad():
                logits = P.functional_forward(model, v, sp.x, bufs)
            logp = torch.log_softmax(logits.double(), -1)
            row += [-logp.gather(1, sp.y[:, None]).mean().item(), (logits.argmax(-1) != sp.y).double().mean().item()]
        model.train(was)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def _engine_table(res):
    return torch.stack([res["train_loss"], res["train_error"], res["test_loss"], res["test_error"]], 1)


def _vectors(model, k, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = P.flatten(model)
    return v + scale * torch.randn(k, v.numel(), generator=g, dtype=v.dtype)


@pytest.mark.parametrize("method", ["auto", "loop"])
def test_engine_equals_plain_loop_without_bn(digits, method):
    torch.manual_seed(0)
    from lowloss.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, {"widths": "32,32"}).double()
    data = _small(digits)
    V = _vectors(model, 5, 0.1)
    res = evaluate_vectors(model, V, data, method=method)
    assert res["engine"]["bn_recomputed"] is False
    assert res["engine"]["passes"] == 1  # train and test in one pass
    torch.testing.assert_close(_engine_table(res), plain_loop(model, V, data, 64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,batch_size", [("vmap", 32), ("loop", 1000), ("vmap", 1000)])
def test_engine_equals_plain_loop_with_bn(digits, method, batch_size):
    torch.manual_seed(0)
    model = SmallConvBN().double()
    data = _small(digits)
    V = _vectors(model, 4, 0.2)
    res = evaluate_vectors(model, V, data, method=method, batch_size=batch_size)
    assert res["engine"]["bn_recomputed"] is True and res["engine"]["method"] == method
    torch.testing.assert_close(_engine_table(res), plain_loop(model, V, data, batch_size), rtol=1e-10, atol=1e-12)
    # the user's module is untouched: its running statistics are still the initial ones
    assert torch.equal(model.bn.running_mean, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_fused_bn_pass_default(digits, method):
    """By default the statistics batch is the whole training set and the train metrics come out of that pass:
    the test metrics equal the two-pass engine's with one whole-set statistics batch, and the train metrics
    are exactly those of the train-mode forward (BN normalising with the whole set's biased variance)."""
    torch.manual_seed(0)
    model = SmallConvBN().double()
    data = _small(digits)
    V = _vectors(model, 3, 0.2)
    fused = evaluate_vectors(model, V, data, method=method)
    assert fused["engine"]["bn_pass"] == "fused" and fused["engine"]["bn_batch_size"] == len(data.train)
    assert fused["engine"]["passes"] == 2
    sep = evaluate_vectors(model, V, data, method=method, batch_size=len(data.train))
    assert sep["engine"]["bn_pass"] == "separate"
    torch.testing.assert_close(fused["test_loss"], sep["test_loss"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused["test_error"], sep["test_error"], rtol=0, atol=0)
    # O(1/N) from the biased vs unbiased variance: small, but not rounding
    torch.testing.assert_close(fused["train_loss"], sep["train_loss"], rtol=2e-3, atol=0)
    for i, v in enumerate(V):
        bufs = P.fresh_bn_buffers(model)
        with torch.no_grad(), P.bn_statistics_mode(model):
            logits = P.functional_forward(model, v, data.train.x, bufs)
        ref = -torch.log_softmax(logits, -1).gather(1, data.train.y[:, None]).mean()
        torch.testing.assert_close(fused["train_loss"][i], ref, rtol=1e-10, atol=1e-12)
    # only the train split: one pass in all
    only = evaluate_vectors(model, V, data, splits=("train",), method=method)
    assert only["engine"]["passes"] == 1
    torch.testing.assert_close(only["train_loss"], fused["train_loss"], rtol=1e-10, atol=1e-12)
    # a BN subset is never fused (its statistics do not cover the train split)
    sub = evaluate_vectors(model, V, data, bn_subset=50, method=method)
    assert sub["engine"]["bn_pass"] == "separate" and sub["engine"]["bn_batch_size"] == 50


def test_bn_subset_is_recorded_and_used(digits, tiny_bn):
    model = tiny_bn.double()
    data = _small(digits)
    V = _vectors(model, 3, 0.3)
    res = evaluate_vectors(model, V, data, bn_subset=50, batch_size=16)
    assert res["engine"]["bn_subset"] == 50
    torch.testing.assert_close(_engine_table(res), plain_loop(model, V, data, 16, bn_subset=50),
                               rtol=1e-10, atol=1e-12)
    full = evaluate_vectors(model, V, data, batch_size=16)
    assert not torch.allclose(full["train_loss"], res["train_loss"])


@pytest.mark.parametrize("chunk,eval_batch", [(1, None), (2, 7), (None, 1)])
def test_chunking_invariance(digits, tiny_bn, chunk, eval_batch):
    model = tiny_bn.double()
    data = _small(digits)
    V = _vectors(model, 5, 0.3)
    ref = evaluate_vectors(model, V, data, batch_size=40)
    res = evaluate_vectors(model, V, data, batch_size=40, chunk_size=chunk, eval_batch=eval_batch,
                           memory_budget=10_000 if chunk is None else None)
    torch.testing.assert_close(_engine_table(res), _engine_table(ref), rtol=1e-12, atol=1e-13)


def test_calibration_probs_and_labels_match_metrics(digits, tiny_bn):
    from lowloss import metrics as M
    from lowloss.engine.evaluate import bn_buffers_for, predict_probs

    model = tiny_bn.double()
    data = _small(digits)
    V = _vectors(model, 3, 0.2)
    res = evaluate_vectors(model, V, data, calibration=True, return_probs=("test",), batch_size=64)
    assert res["probs"]["test"].shape == (3, 60, 10)
    assert torch.equal(res["labels"]["test"], data.test.y)
    for i, v in enumerate(V):
        bufs = bn_buffers_for(model, v, data.train, batch_size=64)
        p, y = predict_probs(model, v, data.test, bufs=bufs)
        assert res["test_ece"][i].item() == pytest.approx(M.ece(p, y), abs=1e-6)
        assert res["test_brier"][i].item() == pytest.approx(M.brier(p, y), abs=1e-6)
        torch.testing.assert_close(res["probs"]["test"][i].double(), p, rtol=0, atol=1e-6)


def test_unvmappable_model_falls_back_to_loop(digits):
    class ItemModel(torch.nn.Module):  # .item() inside forward cannot be vmapped
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            scale = float(self.fc.weight.abs().max().item()) > -1
            return self.fc(x.flatten(1)) * scale

    model = ItemModel().double()
    data = _small(digits)
    V = _vectors(model, 3, 0.1)
    res = evaluate_vectors(model, V, data, method="vmap")
    assert res["engine"]["method"] == "loop" and res["engine"]["vmap_fallback"]
    torch.testing.assert_close(_engine_table(res), plain_loop(model, V, data, 64), rtol=1e-10, atol=1e-12)


def test_plan_chunks_respects_budget():
    k, b = plan_chunks(100, 1000, 0, bytes_per_example=1000, param_bytes=0, memory_budget=10_000_000)
    assert (k, b) == (10, 1000)
    k, b = plan_chunks(100, 1000, 0, bytes_per_example=1000, param_bytes=0, memory_budget=100_000)
    assert k == 1 and b == 100
    k, _ = plan_chunks(7, 10, 0, bytes_per_example=1, param_bytes=0, memory_budget=1 << 30)
    assert k == 7


def test_custom_forward_and_random_model(digits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).double()
    data = _small(digits)
    V = _vectors(model, 3, 0.1)

    def forward(m, x):
        return m(x) * 2.0

    res = evaluate_vectors(model, V, data, forward=forward, method="vmap")
    assert res["engine"]["method"] == "vmap"
    scaled = plain_loop(torch.nn.Sequential(model, _Scale(2.0)), V, data, 64)
    torch.testing.assert_close(_engine_table(res), scaled, rtol=1e-10, atol=1e-12)

    class Noisy(torch.nn.Module):  # random inside forward: vmap refuses, the loop draws per vector
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) + torch.randn(len(x), 10, dtype=x.dtype)

    noisy = Noisy().double()
    W = _vectors(noisy, 1, 0.0).expand(3, -1)
    out = evaluate_vectors(noisy, W, data, method="vmap")
    assert out["engine"]["method"] == "loop" and "random" in out["engine"]["vmap_fallback"].lower()
    assert len(set(out["test_loss"].tolist())) == 3  # independent draws per vector


class _Scale(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def test_keep_freed_memory_can_be_turned_off():
    """The allocator setting is process-wide: check it in fresh interpreters (on, and off by environment)."""
    import os
    import subprocess
    import sys

    code = "from lowloss.utils import keep_freed_memory as k; r = k(); assert k() == r; print(r)"
    env = {**os.environ, "LOWLOSS_MALLOPT": "0"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False"
    env.pop("LOWLOSS_MALLOPT")
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert on.stdout.strip() == str(glibc)


def test_default_bn_batch_is_the_whole_set_when_it_fits(digits, tiny_bn):
    from lowloss.engine.evaluate import EVAL_BATCH, bn_buffers_for, default_bn_batch

    model = tiny_bn.double()
    data = _small(digits)
    assert default_bn_batch(model, data.train) == len(data.train)
    assert default_bn_batch(model, data.train, memory_budget=1000) == EVAL_BATCH  # does not fit: batches
    v = _vectors(model, 1, 0.2)[0]
    whole = P.recompute_bn(model, v, [data.train.x])
    for name, t in bn_buffers_for(model, v, data.train).items():
        torch.testing.assert_close(t, whole[name], rtol=0, atol=0)
