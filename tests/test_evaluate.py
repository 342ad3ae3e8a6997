"""The evaluation engine equals the plain per-vector loop, whatever the chunking, method or device plan."""

import pytest
import torch

from lowloss import params as P
from lowloss.data import Dataset, TensorSplit
from lowloss.engine.evaluate import activation_bytes_per_example, evaluate_vectors, plan_chunks, run_plan


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


# ---------------------------------------------------------------------------------------- plan, run, result
def test_plan_is_chosen_as_before(digits, tiny_bn):
    from lowloss.engine.evaluate import EVAL_BATCH, EvalPlan, plan_evaluation

    torch.manual_seed(0)
    from lowloss.models import build_model

    mlp = build_model("mlp", (1, 8, 8), 10, {"widths": "32,32"}).double()
    data = _small(digits)
    V = _vectors(mlp, 5, 0.1)
    plan = plan_evaluation(mlp, V, data)
    assert isinstance(plan, EvalPlan)
    # CPU: a loop over the vectors, one pass over train and test concatenated in one batch
    assert (plan.method, plan.chunk_size, plan.eval_batch, plan.one_pass, plan.passes) == ("loop", 5, 220, True, 1)
    assert not plan.recompute and plan.eval_splits == ("train", "test")
    assert plan.channels_last  # 4-D inputs on the CPU in loop mode: NHWC
    assert not plan_evaluation(mlp, V, data, method="vmap").channels_last
    assert plan_evaluation(mlp, 5, data) == plan  # the count (device and dtype of the model) plans the same
    assert plan_evaluation(mlp, (5, V.shape[1]), data) == plan
    assert plan_evaluation(mlp, 100, data).chunk_size == 64  # loop: at most 64 vectors per chunk
    assert plan_evaluation(mlp, 100, data, method="vmap").chunk_size == 16  # vmap on the CPU: 16
    # a small budget: the chunking and batches of plan_chunks
    per_ex = activation_bytes_per_example(mlp, data.train.x[:1], None)
    k, b = plan_chunks(100, 220, 0, per_ex, V.shape[1] * 8, 10_000)
    small = plan_evaluation(mlp, 100, data, method="vmap", memory_budget=10_000)
    assert (small.chunk_size, small.eval_batch) == (min(k, 16), b) and b < 220
    explicit = plan_evaluation(mlp, 100, data, chunk_size=7, eval_batch=30)
    assert (explicit.chunk_size, explicit.eval_batch) == (7, 30)

    conv = SmallConvBN().double()
    fused = plan_evaluation(conv, 3, data)
    assert fused.recompute and fused.fused and fused.bn_batch == 160 and fused.eval_splits == ("test",)
    assert fused.channels_last and fused.passes == 2 and fused.eval_batch == 60
    sub = plan_evaluation(conv, 3, data, bn_subset=50)
    assert not sub.fused and sub.bn_batch == 50 and sub.eval_splits == ("train", "test") and sub.passes == 2
    sep = plan_evaluation(conv, 3, data, batch_size=32)
    assert not sep.fused and sep.bn_batch == 32
    # evaluate_vector's plan: one vector, a loop, split by split in prediction batches, no fused pass
    one = plan_evaluation(tiny_bn.double(), 1, data, recompute=True, eval_batch=EVAL_BATCH, method="loop",
                          chunk_size=1, channels_last=False, fuse_bn=False, one_pass=False, scores="probs")
    assert (one.chunk_size, one.eval_batch, one.one_pass, one.fused, one.bn_batch) == (1, EVAL_BATCH, False, False, 160)
    assert one.passes == 3 and one.calibration and one.keep == ("train", "test")
    res = run_plan(fused, conv, _vectors(conv, 3, 0.2), data)
    assert res["engine"]["chunk_size"] == fused.chunk_size and res["engine"]["bn_pass"] == "fused"
    assert res.plan == fused and res.plan.bn_split is None  # the result holds no training data


def test_plan_rejects_unknown_method_and_scores(digits, tiny_bn):
    from lowloss.engine.evaluate import plan_evaluation
    from lowloss.utils import LowlossError

    with pytest.raises(LowlossError, match="not auto, vmap or loop"):
        plan_evaluation(tiny_bn, 2, _small(digits), method="fast")
    with pytest.raises(LowlossError, match="not sums or probs"):
        plan_evaluation(tiny_bn, 2, _small(digits), scores="logits")


# evaluate_vector's values on the tiny BN model (float64, vector _vectors(model, 3, 0.2)[0]), as recorded
OLD_EVALUATE_VECTOR = {
    "default": {"train": {"loss": 3.629307452387993, "accuracy": 0.0875, "nll": 3.629307452387993,
                          "ece": 0.3730089459149021, "brier": 1.1483364127615734},
                "test": {"loss": 3.190256537907721, "accuracy": 0.16666666666666666, "nll": 3.190256537907721,
                         "ece": 0.2996453888461377, "brier": 1.0789424583498815}},
    "recompute": {"train": {"loss": 2.662204266980192, "accuracy": 0.05, "nll": 2.662204266980192,
                            "ece": 0.20106183870012231, "brier": 0.9839725412397244},
                  "test": {"loss": 2.4700954444873573, "accuracy": 0.06666666666666667, "nll": 2.4700954444873573,
                           "ece": 0.16648629041514543, "brier": 0.9462628262897119}},
}


def test_evaluate_vector_values_unchanged(digits, tiny_bn):
    from lowloss.engine.evaluate import bn_buffers_for, evaluate_vector

    model = tiny_bn.double()
    data = _small(digits)
    v = _vectors(model, 3, 0.2)[0]
    for name, kw in (("default", {}), ("recompute", {"recompute": True}),
                     ("recompute", {"recompute": True, "batch_size": 100})):
        got = evaluate_vector(model, v, data, **kw)
        assert list(got) == ["train", "test"]
        for s, row in OLD_EVALUATE_VECTOR[name].items():
            assert list(got[s]) == ["loss", "accuracy", "nll", "ece", "brier"]
            assert all(type(x) is float for x in got[s].values())
            assert got[s] == pytest.approx(row, rel=1e-12, abs=1e-15), (name, s)
    bufs = bn_buffers_for(model, v, data.train)
    got = evaluate_vector(model, v, data, bufs=bufs, splits=("test",))
    assert got == {"test": pytest.approx(OLD_EVALUATE_VECTOR["recompute"]["test"], rel=1e-12, abs=1e-15)}


def test_point_of_a_one_vector_evaluation_is_evaluate_vector(digits, tiny_bn):
    from lowloss.engine.evaluate import EVAL_BATCH, Evaluation, evaluate_vector, plan_evaluation

    model = tiny_bn.double()
    data = _small(digits)
    v = _vectors(model, 1, 0.2)[0]
    for recompute in (False, True):
        plan = plan_evaluation(model, v, data, recompute=recompute, eval_batch=EVAL_BATCH, method="loop",
                               chunk_size=1, channels_last=False, fuse_bn=False, one_pass=False, scores="probs")
        res = run_plan(plan, model, v, data)
        assert isinstance(res, Evaluation)
        assert res.point(0) == evaluate_vector(model, v, data, recompute=recompute)  # exactly
        # the many-vector plan (separate BN pass over the whole set, as evaluate_vector takes it) agrees up to
        # the float32 logits evaluate_vector scores
        fast = evaluate_vectors(model, v[None], data, recompute=recompute, batch_size=len(data.train),
                                calibration=True)
        ref = evaluate_vector(model, v, data, recompute=recompute)
        for s in ("train", "test"):
            assert fast.point(0)[s] == pytest.approx(ref[s], rel=1e-6, abs=1e-9)
            assert list(fast.point(0)[s]) == ["loss", "accuracy", "nll", "ece", "brier"]
    # without calibration metrics a point holds the loss and accuracy
    bare = evaluate_vectors(model, v[None], data, batch_size=len(data.train))
    assert list(bare.point(0)["test"]) == ["loss", "accuracy"]
    acc = bare.point(0)["test"]["accuracy"]  # the fraction correct itself, not 1 - error rounded twice
    assert acc == round(acc * 60) / 60 and acc == pytest.approx(1.0 - float(bare["test_error"][0]), abs=1e-15)


def test_batched_equals_one_at_a_time(digits, tiny_bn):
    from lowloss.engine.evaluate import EVAL_BATCH, evaluate_vector, plan_evaluation

    model = tiny_bn.double()
    data = _small(digits)
    V = _vectors(model, 4, 0.3)
    kw = {"calibration": True, "return_probs": ("test",), "batch_size": 40}
    many = evaluate_vectors(model, V, data, method="vmap", chunk_size=3, **kw)
    assert many["engine"]["method"] == "vmap" and many["probs"]["test"].shape == (4, 60, 10)
    for i, v in enumerate(V):
        one = evaluate_vectors(model, v[None], data, method="loop", **kw)
        for key in ("train_loss", "train_error", "test_loss", "test_error", "test_nll", "test_ece", "test_brier"):
            torch.testing.assert_close(many[key][i:i + 1], one[key], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(many["probs"]["test"][i:i + 1], one["probs"]["test"], rtol=1e-6, atol=1e-7)
        assert many.point(i) == {s: pytest.approx(r, rel=1e-12, abs=1e-13) for s, r in one.point(0).items()}
    # evaluate_vector's scoring on several vectors at once is each vector's evaluate_vector, exactly
    plan = plan_evaluation(model, V, data, recompute=True, eval_batch=EVAL_BATCH, method="loop", chunk_size=3,
                           channels_last=False, fuse_bn=False, one_pass=False, scores="probs")
    res = run_plan(plan, model, V, data)
    assert [res.point(i) for i in range(4)] == [evaluate_vector(model, v, data, recompute=True) for v in V]


def test_evaluation_is_the_mapping_evaluate_vectors_returned(digits, tiny_bn):
    from collections.abc import Mapping

    model = tiny_bn.double()
    data = _small(digits)
    V = _vectors(model, 2, 0.2)
    res = evaluate_vectors(model, V, data, calibration=True, return_probs=("test",), batch_size=64)
    assert isinstance(res, Mapping)
    assert list(res) == ["probs", "labels", "train_loss", "train_error", "train_nll", "train_ece", "train_brier",
                         "test_loss", "test_error", "test_nll", "test_ece", "test_brier", "engine"]
    assert set(dict(res)) == set(res.keys()) and "test_loss" in res and res.get("nope") is None
    assert list(res["probs"]) == ["test"] and list(res["labels"]) == ["train", "test"]
    assert res["test_loss"].dtype == torch.float64 and res["test_loss"].shape == (2,)
    plain = evaluate_vectors(model, V, data, batch_size=64)
    assert list(plain) == ["probs", "labels", "train_loss", "train_error", "test_loss", "test_error", "engine"]
    assert plain["probs"] == {}


def test_probs_scores_keep_predict_probs_values(digits, tiny_bn):
    """scores="probs" keeps each vector's probabilities exactly as predict_probs gives them (float64), and
    planning it reads a streamed evaluation split (a corrupted one, say) only in the prediction pass."""
    from lowloss.engine.evaluate import (
        EVAL_BATCH,
        bn_buffers_for,
        evaluate_vector,
        plan_evaluation,
        predict_probs,
    )

    class Streamed:  # a split without resident tensors that counts its passes
        def __init__(self, split):
            self.split, self.passes = split, 0

        def __len__(self):
            return len(self.split)

        def batches(self, batch_size, **kw):
            self.passes += 1
            yield from self.split.batches(batch_size, **kw)

    model = tiny_bn.double()
    data = _small(digits)
    V = _vectors(model, 2, 0.2)
    plan = plan_evaluation(model, V, data, splits=("test",), recompute=True, eval_batch=EVAL_BATCH, method="loop",
                           channels_last=False, fuse_bn=False, one_pass=False, scores="probs", return_probs=("test",))
    res = run_plan(plan, model, V, data)
    assert res["probs"]["test"].dtype == torch.float64
    for i, v in enumerate(V):
        p, _ = predict_probs(model, v, data.test, bufs=bn_buffers_for(model, v, data.train))
        assert torch.equal(res["probs"]["test"][i], p)
    streamed = Dataset("streamed", data.train, Streamed(data.test), data.input_shape, 10)
    got = evaluate_vector(model, V[0], streamed, recompute=True, splits=("test",))
    assert streamed.test.passes == 1
    assert got == evaluate_vector(model, V[0], data, recompute=True, splits=("test",))
