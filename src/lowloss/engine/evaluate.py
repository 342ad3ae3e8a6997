"""Evaluation of a model at parameter vectors: predictions, losses and metrics.

Every feature that evaluates networks goes through here (curve points, grid points, simplex samples,
ensemble members). The module is never copied or rebuilt per vector; its mode is switched to eval
for the call and restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Mapping

import torch
from torch import nn

from .. import metrics as M
from ..params import (
    Forward,
    ParamLayout,
    batchnorm_modules,
    bn_statistics_mode,
    buffers,
    flatten,
    fresh_bn_buffers,
    functional_forward,
    has_batchnorm,
    recompute_bn,
)

EVAL_BATCH = 1024
FULL_BN_EXAMPLES = 8192  # up to this many training examples the default BN statistics batch is the whole set


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was in saved:
            m.training = was


@torch.no_grad()
def predict_logits(model: nn.Module, vector: torch.Tensor, split, *, bufs: Mapping | None = None,
                   batch_size: int = EVAL_BATCH, device=None, forward: Forward | None = None):
    """Logits (or regression outputs) of the network at `vector` on every example of `split`, plus labels."""
    device = device if device is not None else vector.device
    outs, ys = [], []
    with eval_mode(model):
        for x, y in split.batches(batch_size, device=device):
            outs.append(functional_forward(model, vector, x, bufs, forward=forward).float())
            ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def default_bn_batch(model: nn.Module, split, *, device=None, dtype=None, per_example: int | None = None,
                     memory_budget: int | None = None, forward: Forward | None = None) -> int:
    """The default batch of a BN statistics pass: the whole `split` (its exact statistics) when it has at most
    :data:`FULL_BN_EXAMPLES` examples and one vector's activations on it fit `memory_budget` (default: 1 GiB
    on the CPU, half the free memory on a GPU), else :data:`EVAL_BATCH` (a cumulative average over batches)."""
    n = len(split)
    if n > FULL_BN_EXAMPLES:
        return EVAL_BATCH
    device = torch.device(device) if device is not None else torch.device("cpu")
    if per_example is None:
        x = split.x[:1] if hasattr(split, "x") else next(iter(split.batches(1)))[0]
        dtype = dtype or next(model.parameters()).dtype
        per_example = activation_bytes_per_example(model, _cast(x.to(device), dtype), forward)
    budget = memory_budget or default_memory_budget(device)
    return n if n * per_example <= budget else EVAL_BATCH


def bn_buffers_for(model: nn.Module, vector: torch.Tensor, train_split, *, batch_size: int | None = None,
                   bn_subset: int | None = None, device=None, forward: Forward | None = None):
    """BN statistics for `vector` from the training data (or a fixed subset); None when the model has no BN.

    `batch_size=None`: :func:`default_bn_batch` (the whole set in one batch when it fits), as the engine does."""
    if not has_batchnorm(model):
        return None
    split = train_split.subset(bn_subset) if bn_subset else train_split
    device = device if device is not None else vector.device
    if batch_size is None:
        batch_size = default_bn_batch(model, split, device=device, dtype=vector.dtype, forward=forward)
    return recompute_bn(model, vector, split.batches(batch_size, device=device), forward=forward)


def predict_probs(model: nn.Module, vector: torch.Tensor, split, **kw):
    logits, y = predict_logits(model, vector, split, **kw)
    return torch.softmax(logits.double(), -1), y


def evaluate_vector(model: nn.Module, vector: torch.Tensor, data, *, bufs: Mapping | None = None,
                    recompute: bool = False, batch_size: int = EVAL_BATCH, splits=("train", "test"),
                    forward: Forward | None = None) -> dict:
    """{split: {loss, accuracy, nll, ece, brier}} for one parameter vector (BN recomputed if asked, with
    :func:`default_bn_batch`); `batch_size` is the prediction batch."""
    if recompute:
        bufs = bn_buffers_for(model, vector, data.train, forward=forward) or bufs
    out = {}
    for name in splits:
        split = getattr(data, name)
        probs, y = predict_probs(model, vector, split, bufs=bufs, batch_size=batch_size, forward=forward)
        m = M.classification_metrics(probs, y)
        out[name] = {"loss": m["nll"], **m}
    return out


# ----------------------------------------------------------------------------------------------------------
# The engine: many vectors at once
# ----------------------------------------------------------------------------------------------------------

_MAX_LOSS = -math.log(1e-12)  # the same clamp as metrics.nll: a probability below 1e-12 counts as 1e-12
DEFAULT_CPU_BUDGET = 1 << 30  # bytes of intermediate activations one chunk may hold on the CPU
MAX_CHUNK = 64  # vectors per vmapped call; beyond this the per-call overhead is already negligible
CPU_MAX_CHUNK = 16  # on the CPU larger vmapped chunks fall out of cache (digits mlp: 269 vs 173 points/s at 64)
_RESIDENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # split -> {(device, dtype): (x, y)}


def _resident(split, device, dtype):
    """The split's tensors on `device` (inputs cast to the vectors' float dtype), cached per split."""
    cache = _RESIDENT.setdefault(split, {})
    key = (str(device), dtype)
    if key not in cache:
        x = split.x.to(device)
        if x.is_floating_point() and x.dtype != dtype:
            x = x.to(dtype)
        cache[key] = (x, split.y.to(device))
    return cache[key]


def _cast(x, dtype):
    return x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != dtype else x


def _layout(x, channels_last: bool):
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def activation_bytes_per_example(model: nn.Module, example: torch.Tensor, forward: Forward | None = None) -> int:
    """Bytes of all module outputs for one input example: what one vector costs per example in a pass."""
    total = [0]

    def hook(_m, _i, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), eval_mode(model):
            functional_forward(model, flatten(model).to(example), example[:1], forward=forward)
    finally:
        for h in handles:
            h.remove()
    return max(total[0] + example[:1].numel() * example.element_size(), 1)


def default_memory_budget(device: torch.device) -> int:
    """1 GiB on the CPU; half of the free memory on a GPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return DEFAULT_CPU_BUDGET


def plan_chunks(num_vectors: int, num_examples: int, stats_batch: int, bytes_per_example: int, param_bytes: int,
                memory_budget: int, max_chunk: int = MAX_CHUNK, eval_batch: int | None = None) -> tuple[int, int]:
    """(vectors per chunk, examples per evaluation batch) that keep one chunk's activations in the budget.

    A chunk of K vectors on a batch of B examples holds about K * (B * bytes_per_example + param_bytes).
    The evaluation batch is the whole evaluation set when it fits (one pass, no per-batch overhead).
    """
    b = min(num_examples, eval_batch or num_examples)
    b = max(b, 1)
    widest = max(b, stats_batch or 0)  # stats_batch: examples per statistics batch (0: no statistics pass)
    k = memory_budget // max(widest * bytes_per_example + param_bytes, 1)
    if k < 1 and eval_batch is None:  # not even one vector on the whole set: shrink the evaluation batch
        widest = max((memory_budget - param_bytes) // bytes_per_example, 32)
        b = min(b, widest)
        k = 1
    k = int(max(1, min(k, max_chunk, num_vectors)))
    chunks = math.ceil(num_vectors / k)
    return math.ceil(num_vectors / chunks), int(b)


class _Runner:
    """Runs the module for a chunk of K vectors: one vmapped ``functional_call``, or a loop of calls.

    Parameters are split into named views once per chunk (and, for NHWC convolutions, laid out once).
    """

    def __init__(self, model: nn.Module, vectors: torch.Tensor, forward: Forward | None, use_vmap: bool,
                 channels_last: bool = False):
        self.model, self.forward, self.use_vmap = model, forward, use_vmap
        self.k = vectors.shape[0]
        params = ParamLayout.of(model).unflatten(vectors)
        if use_vmap:
            self.params = params
            self._vmapped = torch.func.vmap(self._call, in_dims=(0, 0, None, None), randomness="error")
        else:
            self.params = [{n: t[k] for n, t in params.items()} for k in range(self.k)]
            if channels_last:  # oneDNN's fast convolutions want NHWC weights as well as NHWC inputs
                self.params = [{n: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                                for n, t in pk.items()} for pk in self.params]

    def _call(self, params, batched_bufs, shared, x):
        pb = {**shared, **batched_bufs, **params}
        if self.forward is None:
            return torch.func.functional_call(self.model, pb, (x,), strict=False)
        from ..params import _swap_tensors

        with _swap_tensors(self.model, pb):
            return self.forward(self.model, x)

    def __call__(self, batched_bufs, shared, x):
        """Outputs [K, B, ...]. `shared` holds per-vector copies (a list) in loop mode, one dict in vmap mode."""
        if self.use_vmap:
            return self._vmapped(self.params, batched_bufs, shared, x)
        outs = []
        for k, pk in enumerate(self.params):
            bk = {n: t[k] for n, t in batched_bufs.items()}
            outs.append(self._call(pk, bk, shared[k], x))
        return torch.stack(outs)


def choose_method(model: nn.Module, device: torch.device) -> str:
    """What measured fastest: vmap on a GPU; on the CPU a loop of large-batch calls (NHWC for convolutional
    models: vmapped convolutions become grouped convolutions,
    which oneDNN runs about 2x slower than one NHWC convolution per vector; see bench/plane.py)."""
    if device.type == "cpu":
        # measured on 2 cores, quiet machine: a loop of whole-dataset calls beats vmapped chunks for dense models
        # too (digits mlp 128x128: ~850 vs ~650 points/s; 256x256: ~330 vs ~250)
        return "loop"
    return "vmap"


def _bn_buffer_split(model: nn.Module, device, dtype, k: int, recompute: bool):
    """(batched BN running statistics [K, ...], shared buffers) for a chunk of K vectors."""
    if not recompute:
        return {}, {n: _cast(b, dtype) if b.is_floating_point() else b for n, b in buffers(model).items()}
    fresh = fresh_bn_buffers(model, device=device)
    stat_names = set()
    for name, m in batchnorm_modules(model):
        pre = f"{name}." if name else ""
        if m.running_mean is not None:
            stat_names.update({pre + "running_mean", pre + "running_var"})
    batched = {n: _cast(fresh[n], dtype).unsqueeze(0).repeat(k, *([1] * fresh[n].dim())) for n in stat_names}
    shared = {n: b for n, b in fresh.items() if n not in stat_names}
    return batched, shared


class _Accumulator:
    """Per-vector sums of loss and correct predictions per split, plus kept probabilities."""

    def __init__(self, k: int, splits, keep_probs, regression: bool, device):
        self.k, self.regression = k, regression
        self.loss = {s: torch.zeros(k, dtype=torch.float64, device=device) for s in splits}
        self.correct = {s: torch.zeros(k, dtype=torch.float64, device=device) for s in splits}
        self.count = dict.fromkeys(splits, 0)
        self.probs = {s: [] for s in keep_probs}
        self.labels = {s: [] for s in splits}

    def add(self, split: str, out: torch.Tensor, y: torch.Tensor):
        """out [K, B, C] (or [K, B, ...] for regression), y [B]."""
        self.count[split] += y.shape[0]
        self.labels[split].append(y)
        if self.regression:
            err = (out.double() - y.double().reshape(1, *y.shape)) ** 2
            self.loss[split] += err.reshape(self.k, -1).sum(1) / max(math.prod(y.shape[1:]), 1)
            return
        logp = torch.log_softmax(out.double(), -1)
        true = logp.gather(-1, y.long().reshape(1, -1, 1).expand(self.k, -1, 1)).squeeze(-1)
        self.loss[split] += (-true).clamp(max=_MAX_LOSS).sum(1)
        self.correct[split] += (out.argmax(-1) == y.reshape(1, -1)).double().sum(1)
        if split in self.probs:
            self.probs[split].append(logp.exp())


@torch.no_grad()
def evaluate_vectors(model: nn.Module, vectors: torch.Tensor, data, *, splits=("train", "test"),
                     recompute: bool | None = None, bn_subset: int | None = None, batch_size: int | None = None,
                     calibration: bool = False, return_probs: tuple[str, ...] = (), forward: Forward | None = None,
                     quiet: bool = True, memory_budget: int | None = None, chunk_size: int | None = None,
                     eval_batch: int | None = None, method: str = "auto", channels_last: bool | None = None) -> dict:
    """Metrics of many parameter vectors (shape [K, P]) on the given splits: the shared evaluation engine.

    Returns ``{"<split>_loss": [K], "<split>_error": [K]}`` (float64 tensors; error as a fraction), plus
    ``<split>_nll/_ece/_brier`` when `calibration`, and ``probs[<split>]`` ([K, N, C]) for splits in
    `return_probs`, and ``labels[<split>]``. BN statistics are recomputed per vector on the training data
    (or a fixed subset of `bn_subset` examples) when the model has BatchNorm (`recompute=None` means
    "if it has BN"), exactly as :func:`bn_buffers_for` does: one pass in batches of `batch_size`,
    cumulative average. Losses are the mean NLL of the true class (probabilities clamped at 1e-12 as in
    :func:`lowloss.metrics.nll`); for regression data, the mean squared error (and error NaN).

    `batch_size=None` (the default) takes the statistics over the whole training set in ONE batch when it
    has at most :data:`FULL_BN_EXAMPLES` examples and its activations fit the memory budget (else batches of
    :data:`EVAL_BATCH`). The statistics are then the training set's own (mean and unbiased variance per
    channel), and the training metrics come out of that same pass ("fused": train-mode BN normalises with
    the biased variance, (N-1)/N of the unbiased running variance the other splits see; the train loss
    differs from a separate evaluation pass by O(1/N) relative, N = examples x positions per channel).
    That saves one of the three passes; ``engine["bn_pass"]`` says which ran. An explicit `batch_size`
    always gives the exact two-pass semantics.

    How it is fast (the results do not depend on any of this):

    * the module is never copied: vectors are split into named views and run with ``functional_call``;
    * resident data lives on the vectors' device (cached per split); a model without BatchNorm is
      evaluated in ONE pass over train and test concatenated; with BatchNorm, one statistics pass over
      the training data and one evaluation pass (the statistics must be complete before evaluating),
      or, fused, one pass over the training data and one over the other splits;
    * chunks of vectors run at once through ``torch.func.vmap`` (BN statistics batched per vector), on
      evaluation batches as large as `memory_budget` (bytes; default 1 GiB on CPU, half the free GPU
      memory) allows; `chunk_size` / `eval_batch` override the plan;
    * `method`: ``"auto"`` (:func:`choose_method`: what measured fastest for the model and device; a model
      that cannot be vmapped falls back to the loop transparently), ``"vmap"`` or ``"loop"``;
    * `channels_last` (default: on the CPU for 4-D inputs in loop mode): NHWC inputs and convolution
      weights, which oneDNN convolves about twice as fast;
    * on the CPU, glibc keeps freed activations for the next pass (:func:`lowloss.utils.keep_freed_memory`)
      instead of page-faulting them back in.

    ``out["engine"]`` records what ran.
    """
    from ..utils import LowlossError, keep_freed_memory, progress

    if method not in ("auto", "vmap", "loop"):
        raise LowlossError(f"evaluate_vectors method '{method}' is not auto, vmap or loop")
    vectors = vectors.detach().reshape(-1, vectors.shape[-1])
    num = vectors.shape[0]
    device, dtype = vectors.device, vectors.dtype
    if device.type == "cpu":
        keep_freed_memory()
    auto = method == "auto"
    if auto:
        method = choose_method(model, device)
    if recompute is None:
        recompute = has_batchnorm(model)
    recompute = bool(recompute) and has_batchnorm(model)
    regression = getattr(data, "task", "classification") == "regression"
    splits = tuple(splits)
    bn_split = None
    if recompute:
        bn_split = data.train.subset(bn_subset) if bn_subset else data.train
    bn_resident = bn_split is not None and hasattr(bn_split, "x")
    budget = int(memory_budget) if memory_budget else default_memory_budget(device)
    per_ex = activation_bytes_per_example(model, _cast(_first_input(data, splits, device), dtype), forward)
    fused = False
    if recompute and batch_size is None:
        batch_size = default_bn_batch(model, bn_split, per_example=per_ex, memory_budget=budget)
        fused = batch_size >= len(bn_split) and bn_resident and not bn_subset and "train" in splits
    batch_size = batch_size or EVAL_BATCH
    eval_splits = tuple(s for s in splits if not (fused and s == "train"))

    # the evaluation set: resident splits concatenated once (one pass), others streamed split by split
    resident = all(hasattr(getattr(data, s), "x") for s in splits)
    if resident and eval_splits:
        parts = [_resident(getattr(data, s), device, dtype) for s in eval_splits]
        xs = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        ys = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        bounds = [0]
        for p in parts:
            bounds.append(bounds[-1] + len(p[1]))
        n_eval = len(ys)
        example = xs[:1]
    else:
        n_eval = sum(len(getattr(data, s)) for s in eval_splits)
        example = _cast(_first_input(data, splits, device), dtype)
    if bn_resident:
        bn_x = _resident(bn_split, device, dtype)[0]
    if channels_last is None:
        channels_last = device.type == "cpu" and example.dim() == 4 and method == "loop"
    channels_last = bool(channels_last) and example.dim() == 4
    if channels_last and resident and eval_splits:
        xs = xs.contiguous(memory_format=torch.channels_last)
    if channels_last and bn_resident:
        bn_x = bn_x.contiguous(memory_format=torch.channels_last)

    k_chunk, b_eval = plan_chunks(num if method == "vmap" else 1, n_eval,
                                  min(batch_size, len(bn_split)) if recompute else 0, per_ex,
                                  vectors.shape[1] * vectors.element_size(), budget, eval_batch=eval_batch)
    if method == "loop":  # one vector's activations live at a time: chunks only amortise data passes
        k_chunk = min(num, MAX_CHUNK)
    elif device.type == "cpu":  # measured on 2 cores: 16 vectors per call keep batched matmuls in cache
        k_chunk = min(k_chunk, CPU_MAX_CHUNK)
    if chunk_size:
        k_chunk = max(1, min(int(chunk_size), num))
    if not resident:
        b_eval = eval_batch or batch_size

    out: dict = {"probs": {}, "labels": {}}
    keep = tuple(s for s in splits if s in return_probs or calibration)
    use_vmap = method == "vmap"
    fell_back = None
    results = []
    bar = progress(total=num, desc="evaluate", quiet=quiet, unit="vec")
    start = 0
    while start < num:
        stop = min(start + k_chunk, num)
        chunk = vectors[start:stop]
        try:
            results.append(_evaluate_chunk(model, chunk, data, splits, keep, regression, forward, use_vmap,
                                           recompute, bn_split, bn_x if bn_resident else None, batch_size,
                                           (xs, ys, bounds) if resident and eval_splits else None, b_eval,
                                           channels_last and not use_vmap, eval_splits,
                                           _resident(data.train, device, dtype)[1] if fused else None))
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
            if not use_vmap or results:  # vmap refused this model (first chunk): fall back to the loop
                raise
            fell_back = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            use_vmap = False
            continue
        bar.update(stop - start)
        start = stop
    bar.close()

    for s in splits:
        out[f"{s}_loss"] = torch.cat([r.loss[s] for r in results]).cpu() / max(results[0].count[s], 1)
        if regression:
            out[f"{s}_error"] = torch.full((num,), float("nan"), dtype=torch.float64)
        else:
            out[f"{s}_error"] = 1.0 - torch.cat([r.correct[s] for r in results]).cpu() / max(results[0].count[s], 1)
        labels = torch.cat(results[0].labels[s]).cpu()
        out["labels"][s] = labels
        if s in keep:
            probs = torch.cat([torch.cat(r.probs[s], 1) for r in results]).cpu()
            if calibration:
                out[f"{s}_nll"] = out[f"{s}_loss"].clone()
                out[f"{s}_ece"] = torch.tensor([M.ece(p, labels) for p in probs], dtype=torch.float64)
                out[f"{s}_brier"] = torch.tensor([M.brier(p, labels) for p in probs], dtype=torch.float64)
            if s in return_probs:
                out["probs"][s] = probs.float()
    out["engine"] = {"method": "vmap" if use_vmap else "loop", "chunk_size": k_chunk, "eval_batch": b_eval,
                     "passes": int(recompute) + (int(bool(eval_splits)) if resident else len(eval_splits)),
                     "channels_last": channels_last, "bn_recomputed": recompute,
                     "bn_pass": ("fused" if fused else "separate") if recompute else None,
                     "bn_subset": bn_subset if recompute else None,
                     "bn_batch_size": batch_size if recompute else None, "memory_budget": budget,
                     "device": str(device), "vmap_fallback": fell_back}
    return out


def _first_input(data, splits, device):
    split = getattr(data, (tuple(splits) or ("train",))[0])
    return split.x[:1].to(device) if hasattr(split, "x") else next(iter(split.batches(1, device=device)))[0]


def _evaluate_chunk(model, chunk, data, splits, keep, regression, forward, use_vmap, recompute, bn_split, bn_x,
                    batch_size, resident, b_eval, channels_last, eval_splits, fused_y) -> _Accumulator:
    k = chunk.shape[0]
    device, dtype = chunk.device, chunk.dtype
    runner = _Runner(model, chunk, forward, use_vmap, channels_last)
    batched, shared = _bn_buffer_split(model, device, dtype, k, recompute)
    if not use_vmap:  # each vector counts its own BN batches
        shared = [{n: b.clone() for n, b in shared.items()} for _ in range(k)]
    acc = _Accumulator(k, splits, keep, regression, device)
    if recompute:
        with bn_statistics_mode(model):
            if fused_y is not None:  # one batch = the whole training set: its outputs are the train metrics
                acc.add("train", runner(batched, shared, bn_x), fused_y)
            elif bn_x is not None:
                for i in range(0, len(bn_x), batch_size):
                    runner(batched, shared, bn_x[i:i + batch_size])
            else:
                for x, _y in bn_split.batches(batch_size, device=device):
                    runner(batched, shared, _layout(_cast(x, dtype), channels_last))
    with eval_mode(model):
        if resident is not None:
            xs, ys, bounds = resident
            for i in range(0, len(ys), b_eval):
                j = min(i + b_eval, len(ys))
                outb = runner(batched, shared, xs[i:j])
                for s, lo, hi in zip(eval_splits, bounds[:-1], bounds[1:]):
                    a, b = max(lo, i), min(hi, j)
                    if a < b:
                        acc.add(s, outb[:, a - i:b - i], ys[a:b])
        else:
            for s in eval_splits:
                for x, y in getattr(data, s).batches(b_eval, device=device):
                    acc.add(s, runner(batched, shared, _layout(_cast(x, dtype), channels_last)), y)
    return acc
