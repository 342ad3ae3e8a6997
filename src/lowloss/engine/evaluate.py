"""Evaluation of a model at parameter vectors: predictions, losses and metrics.

Every feature that evaluates networks goes through here (curve points, grid points, simplex samples,
ensemble members). An evaluation is planned, then run:

* :func:`plan_evaluation` decides everything before anything runs (vmap or a loop, vectors per chunk,
  examples per batch, the BN statistics pass, what to keep) and returns an :class:`EvalPlan`;
* :func:`run_plan` executes a plan on the vectors and returns an :class:`Evaluation`, the one result
  type of one vector and of many: a mapping of per-vector metric tensors, and :meth:`Evaluation.point`
  for one vector's ``{split: {loss, accuracy, nll, ece, brier}}``.

:func:`evaluate_vectors` (many vectors, the fast plan) and :func:`evaluate_vector` (one vector, scored from
its predictive probabilities as :func:`predict_probs` gives them) are both a plan and its run. The module is
never copied or rebuilt per vector; its mode is switched for the call and restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

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
    num_params,
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
    """Softmax probabilities (float64) and labels; a one-line error for regression targets (float labels)."""
    logits, y = predict_logits(model, vector, split, **kw)
    if y.is_floating_point():
        from ..utils import LowlossError

        raise LowlossError("this network predicts regression targets (float labels), and probabilities need a "
                           "classifier: evaluate regression runs with lowloss connect, lowloss plane or "
                           "lowloss.engine.evaluate.evaluate_vectors (loss = MSE)")
    return torch.softmax(logits.double(), -1), y


def evaluate_vector(model: nn.Module, vector: torch.Tensor, data, *, bufs: Mapping | None = None,
                    recompute: bool = False, batch_size: int = EVAL_BATCH, splits=("train", "test"),
                    forward: Forward | None = None) -> dict:
    """{split: {loss, accuracy, nll, ece, brier}} for one parameter vector (Python floats; loss = nll).

    A one-vector plan of the engine (:func:`plan_evaluation` with ``scores="probs"``), run on `vector`:
    BN statistics recomputed if asked (one separate pass over the training data in batches of
    :func:`default_bn_batch`), else the buffers `bufs` (default: the module's own); then each split in
    prediction batches of `batch_size`, scored with :func:`lowloss.metrics.classification_metrics` on the
    probabilities :func:`predict_probs` gives. Equals :meth:`Evaluation.point` of that run.
    """
    plan = plan_evaluation(model, vector, data, splits=splits, recompute=recompute, eval_batch=batch_size,
                           forward=forward, method="loop", chunk_size=1, channels_last=False, fuse_bn=False,
                           one_pass=False, scores="probs")
    return run_plan(plan, model, vector, data, forward=forward, bufs=bufs).point(0)


# ----------------------------------------------------------------------------------------------------------
# The engine: a plan, its run, and the result
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


def choose_method(model: nn.Module, device: torch.device) -> str:
    """What measured fastest: vmap on a GPU; on the CPU a loop of large-batch calls (NHWC for convolutional
    models: vmapped convolutions become grouped convolutions,
    which oneDNN runs about 2x slower than one NHWC convolution per vector; see bench/plane.py)."""
    if device.type == "cpu":
        # measured on 2 cores, quiet machine: a loop of whole-dataset calls beats vmapped chunks for dense models
        # too (digits mlp 128x128: ~850 vs ~650 points/s; 256x256: ~330 vs ~250)
        return "loop"
    return "vmap"


@dataclass(frozen=True)
class EvalPlan:
    """Everything decided before an evaluation runs; made by :func:`plan_evaluation`, run by :func:`run_plan`.

    ``eval_splits`` are the splits of the evaluation pass (all of ``splits`` but train when ``fused``: the
    train metrics then come out of the statistics pass); ``keep`` the splits whose predictive
    probabilities are collected (for ``return_probs`` and the calibration metrics).
    """

    num_vectors: int
    splits: tuple[str, ...]
    method: str  # "vmap" or "loop" (a model that vmap refuses runs as a loop; the result's engine record says)
    chunk_size: int  # vectors per chunk
    eval_batch: int  # examples per evaluation batch
    one_pass: bool  # resident splits concatenated into one evaluation pass (else streamed split by split)
    eval_splits: tuple[str, ...]
    recompute: bool  # BN statistics recomputed per vector
    bn_subset: int | None  # examples of the fixed training subset the statistics come from (None: all)
    bn_batch: int  # examples per statistics batch (and per streamed batch when no eval_batch was given)
    fused: bool  # one whole-training-set statistics batch whose outputs are the train metrics
    scores: str  # "sums": per-batch sums of the loss and correct predictions; "probs": metrics of the probabilities
    calibration: bool  # <split>_nll/_ece/_brier
    return_probs: tuple[str, ...]
    keep: tuple[str, ...]
    regression: bool
    channels_last: bool  # NHWC inputs (and, in loop mode, convolution weights)
    device: torch.device
    dtype: torch.dtype
    memory_budget: int
    bn_split: object = field(default=None, repr=False, compare=False)  # the training split or its fixed subset

    @property
    def passes(self) -> int:
        """Passes over data per chunk: the statistics pass, then one (concatenated) or one per split."""
        return int(self.recompute) + (int(bool(self.eval_splits)) if self.one_pass else len(self.eval_splits))


def plan_evaluation(model: nn.Module, vectors: torch.Tensor | int | Sequence[int], data, *,
                    splits=("train", "test"), recompute: bool | None = None, bn_subset: int | None = None,
                    batch_size: int | None = None, calibration: bool = False, return_probs: tuple[str, ...] = (),
                    forward: Forward | None = None, memory_budget: int | None = None,
                    chunk_size: int | None = None, eval_batch: int | None = None, method: str = "auto",
                    channels_last: bool | None = None, fuse_bn: bool = True, one_pass: bool = True,
                    scores: str = "sums", device=None, dtype: torch.dtype | None = None) -> EvalPlan:
    """The plan of evaluating `vectors` (the [K, P] tensor, its shape, or the count K) on `data`.

    The options are :func:`evaluate_vectors`'s (see there), plus:

    * `fuse_bn`: allow the fused statistics pass (``False``: always a separate evaluation pass);
    * `one_pass`: concatenate resident splits into one evaluation pass (``False``: split by split, in
      batches of `eval_batch`, as :func:`predict_logits` does);
    * `scores`: ``"sums"`` (per-vector sums of the clamped NLL and of correct predictions, batch by batch)
      or ``"probs"`` (each vector's probabilities on a whole split, softmax of its float32 logits in float64 as
      :func:`predict_probs` gives them, scored by :func:`lowloss.metrics.classification_metrics`; all four
      metrics, as :func:`evaluate_vector` reports them);
    * `device` / `dtype`: those of the vectors when only their count or shape is given (default: the
      model's parameters').

    Measures one example's activations (:func:`activation_bytes_per_example`) when the chunking depends on
    them (that of the first split, which also sizes the default statistics batch); otherwise the default
    statistics batch is :func:`default_bn_batch` of the statistics split, as :func:`bn_buffers_for` takes it.
    """
    from ..utils import LowlossError

    if method not in ("auto", "vmap", "loop"):
        raise LowlossError(f"evaluate_vectors method '{method}' is not auto, vmap or loop")
    if scores not in ("sums", "probs"):
        raise LowlossError(f"evaluation scores '{scores}' is not sums or probs")
    if torch.is_tensor(vectors):
        num, size = math.prod(vectors.shape[:-1]), vectors.shape[-1]
        device, dtype = vectors.device, vectors.dtype
    else:
        first = next(model.parameters())
        device = torch.device(device) if device is not None else first.device
        dtype = dtype or first.dtype
        shape = (int(vectors), num_params(model)) if isinstance(vectors, int) else tuple(vectors)
        num, size = math.prod(shape[:-1]), shape[-1]
    param_bytes = size * torch.empty((), dtype=dtype).element_size()
    if method == "auto":
        method = choose_method(model, device)
    bn = has_batchnorm(model)
    recompute = (bn if recompute is None else bool(recompute)) and bn
    regression = getattr(data, "task", "classification") == "regression"
    if regression:  # no probabilities: the loss is the MSE, the error its root (see evaluate_vectors)
        scores, calibration = "sums", False
    splits = tuple(splits)
    bn_split = None
    if recompute:
        bn_split = data.train.subset(bn_subset) if bn_subset else data.train
    bn_resident = bn_split is not None and hasattr(bn_split, "x")
    budget = int(memory_budget) if memory_budget else default_memory_budget(device)
    resident = one_pass and all(hasattr(getattr(data, s), "x") for s in splits)
    sized = resident or (method == "vmap" and not chunk_size)  # the chunking depends on the activations
    example = None
    if sized or channels_last is None or channels_last:
        example = _cast(_first_input(data, splits, device), dtype)
    per_ex = activation_bytes_per_example(model, example, forward) if sized else None
    fused = False
    if recompute and batch_size is None:  # measured on the statistics split itself unless measured above
        batch_size = default_bn_batch(model, bn_split, device=device, dtype=dtype, per_example=per_ex,
                                      memory_budget=budget, forward=forward)
        fused = (fuse_bn and batch_size >= len(bn_split) and bn_resident and not bn_subset
                 and "train" in splits)
    batch_size = batch_size or EVAL_BATCH
    eval_splits = tuple(s for s in splits if not (fused and s == "train"))
    if channels_last is None:
        channels_last = device.type == "cpu" and example.dim() == 4 and method == "loop"
    channels_last = bool(channels_last) and example.dim() == 4

    k_chunk, b_eval = min(num, MAX_CHUNK), eval_batch or batch_size
    if sized:
        n_eval = sum(len(getattr(data, s)) for s in eval_splits)
        k_chunk, b_eval = plan_chunks(num if method == "vmap" else 1, n_eval,
                                      min(batch_size, len(bn_split)) if recompute else 0, per_ex, param_bytes,
                                      budget, eval_batch=eval_batch)
    if method == "loop":  # one vector's activations live at a time: chunks only amortise data passes
        k_chunk = min(num, MAX_CHUNK)
    elif device.type == "cpu":  # measured on 2 cores: 16 vectors per call keep batched matmuls in cache
        k_chunk = min(k_chunk, CPU_MAX_CHUNK)
    if chunk_size:
        k_chunk = max(1, min(int(chunk_size), num))
    if not resident:
        b_eval = eval_batch or batch_size
    return_probs = tuple(return_probs)
    keep = splits if scores == "probs" else tuple(s for s in splits if s in return_probs or calibration)
    return EvalPlan(num_vectors=num, splits=splits, method=method, chunk_size=k_chunk, eval_batch=int(b_eval),
                    one_pass=resident, eval_splits=eval_splits, recompute=recompute, bn_subset=bn_subset,
                    bn_batch=batch_size, fused=fused, scores=scores, calibration=calibration or scores == "probs",
                    return_probs=return_probs, keep=keep, regression=regression, channels_last=channels_last,
                    device=device, dtype=dtype, memory_budget=budget, bn_split=bn_split)


def _first_input(data, splits, device):
    split = getattr(data, (tuple(splits) or ("train",))[0])
    return split.x[:1].to(device) if hasattr(split, "x") else next(iter(split.batches(1, device=device)))[0]


class Evaluation(Mapping):
    """The result of :func:`run_plan`, for one vector or many (K vectors).

    As a mapping (what :func:`evaluate_vectors` returns): ``"<split>_loss"`` and ``"<split>_error"``
    ([K] float64 tensors; error as a fraction; for regression data the loss is the mean squared error and the
    error its square root, the RMSE), ``"<split>_nll"``, ``"<split>_ece"``,
    ``"<split>_brier"`` when the plan keeps calibration metrics, ``"probs"`` (``{split: [K, N, C]}`` for the
    plan's `return_probs`: float32; float64 under ``scores="probs"``, the values :func:`predict_probs` gives), ``"labels"`` (``{split: [N]}``) and ``"engine"`` (what ran: method,
    chunking, passes, BN pass, budget, device, vmap fallback). ``plan`` is the :class:`EvalPlan` it ran, less
    its reference to the statistics split (a result holds no training data).
    """

    def __init__(self, values: dict, accuracy: dict[str, torch.Tensor], plan: EvalPlan):
        self._values, self._accuracy, self.plan = values, accuracy, plan

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self) -> Iterator:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Evaluation({self.plan.num_vectors} vectors, splits={self.plan.splits}, keys={list(self._values)})"

    def point(self, i: int = 0) -> dict:
        """``{split: {loss, accuracy, nll, ece, brier}}`` of vector `i` (Python floats), the shape
        :func:`evaluate_vector` returns; nll, ece and brier where the plan kept calibration metrics."""
        out = {}
        for s in self.plan.splits:
            row = {"loss": float(self._values[f"{s}_loss"][i]), "accuracy": float(self._accuracy[s][i])}
            if self.plan.calibration:
                row.update({m: float(self._values[f"{s}_{m}"][i]) for m in ("nll", "ece", "brier")})
            out[s] = row
        return out


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


def _bn_buffer_split(model: nn.Module, device, dtype, k: int, recompute: bool, bufs: Mapping | None = None):
    """(batched BN running statistics [K, ...], shared buffers) for a chunk of K vectors; without
    recomputation the shared buffers are `bufs` (default: the module's own)."""
    if not recompute:
        own = buffers(model) if bufs is None else bufs
        return {}, {n: _cast(b, dtype) if b.is_floating_point() else b for n, b in own.items()}
    fresh = fresh_bn_buffers(model, device=device)
    stat_names = set()
    for name, m in batchnorm_modules(model):
        pre = f"{name}." if name else ""
        if m.running_mean is not None:
            stat_names.update({pre + "running_mean", pre + "running_var"})
    batched = {n: _cast(fresh[n], dtype).unsqueeze(0).repeat(k, *([1] * fresh[n].dim())) for n in stat_names}
    shared = {n: b for n, b in fresh.items() if n not in stat_names}
    return batched, shared


class _Sums:
    """Per-vector sums of loss and correct predictions per split, plus kept probabilities (scores "sums")."""

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
            if split in self.probs:  # regression: the outputs themselves
                self.probs[split].append(out.float())
            return
        logp = torch.log_softmax(out.double(), -1)
        true = logp.gather(-1, y.long().reshape(1, -1, 1).expand(self.k, -1, 1)).squeeze(-1)
        self.loss[split] += (-true).clamp(max=_MAX_LOSS).sum(1)
        self.correct[split] += (out.argmax(-1) == y.reshape(1, -1)).double().sum(1)
        if split in self.probs:
            self.probs[split].append(logp.exp())


class _Outputs:
    """Per-vector float32 outputs per split (scores "probs"), as :func:`predict_logits` collects them."""

    def __init__(self, k: int, splits):
        self.k = k
        self.outputs = {s: [] for s in splits}
        self.labels = {s: [] for s in splits}

    def add(self, split: str, out: torch.Tensor, y: torch.Tensor):
        self.outputs[split].append(out.float())
        self.labels[split].append(y)

    def probs(self, split: str) -> list[torch.Tensor]:
        """Each vector's [N, C] probabilities: softmax in float64 of its float32 logits on the whole split."""
        return [torch.softmax(torch.cat([o[k] for o in self.outputs[split]]).double(), -1) for k in range(self.k)]


def _results(plan: EvalPlan, chunks: list) -> tuple[dict, dict]:
    """(the mapping's values, the per-vector accuracy per split) from the chunks' accumulators."""
    values: dict = {"probs": {}, "labels": {}}
    if plan.regression:
        values["outputs"] = {}
    accuracy = {}
    for s in plan.splits:
        labels = torch.cat(chunks[0].labels[s]).cpu()
        values["labels"][s] = labels
        if plan.scores == "probs":
            y = torch.cat(chunks[0].labels[s])
            probs = [p for r in chunks for p in r.probs(s)]
            rows = [M.classification_metrics(p, y) for p in probs]
            values[f"{s}_loss"] = torch.tensor([m["nll"] for m in rows], dtype=torch.float64)
            accuracy[s] = torch.tensor([m["accuracy"] for m in rows], dtype=torch.float64)
            values[f"{s}_error"] = 1.0 - accuracy[s]
            values[f"{s}_nll"] = values[f"{s}_loss"].clone()
            values[f"{s}_ece"] = torch.tensor([m["ece"] for m in rows], dtype=torch.float64)
            values[f"{s}_brier"] = torch.tensor([m["brier"] for m in rows], dtype=torch.float64)
            if s in plan.return_probs:
                values["probs"][s] = torch.stack(probs).cpu()
            continue
        count = max(chunks[0].count[s], 1)
        values[f"{s}_loss"] = torch.cat([r.loss[s] for r in chunks]).cpu() / count
        if plan.regression:  # no accuracy; the error is the RMSE, in the targets' units
            accuracy[s] = torch.full((plan.num_vectors,), float("nan"), dtype=torch.float64)
            values[f"{s}_error"] = values[f"{s}_loss"].sqrt()
            if s in plan.return_probs:
                values["outputs"][s] = torch.cat([torch.cat(r.probs[s], 1) for r in chunks]).cpu()
            continue
        accuracy[s] = torch.cat([r.correct[s] for r in chunks]).cpu() / count
        values[f"{s}_error"] = 1.0 - accuracy[s]
        if s in plan.keep:
            probs = torch.cat([torch.cat(r.probs[s], 1) for r in chunks]).cpu()
            if plan.calibration:
                values[f"{s}_nll"] = values[f"{s}_loss"].clone()
                values[f"{s}_ece"] = torch.tensor([M.ece(p, labels) for p in probs], dtype=torch.float64)
                values[f"{s}_brier"] = torch.tensor([M.brier(p, labels) for p in probs], dtype=torch.float64)
            if s in plan.return_probs:
                values["probs"][s] = probs.float()
    return values, accuracy


@dataclass
class _Inputs:
    """The data a run reads, prepared once: the resident evaluation set (train and test concatenated,
    with split bounds), the resident statistics inputs, the train labels of a fused pass."""

    eval_set: tuple | None = None  # (x, y, bounds)
    bn_x: torch.Tensor | None = None
    fused_y: torch.Tensor | None = None


def _prepare_inputs(plan: EvalPlan, data) -> _Inputs:
    device, dtype = plan.device, plan.dtype
    inputs = _Inputs()
    if plan.one_pass and plan.eval_splits:
        parts = [_resident(getattr(data, s), device, dtype) for s in plan.eval_splits]
        xs = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        ys = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        bounds = [0]
        for p in parts:
            bounds.append(bounds[-1] + len(p[1]))
        if plan.channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        inputs.eval_set = (xs, ys, bounds)
    if plan.bn_split is not None and hasattr(plan.bn_split, "x"):
        bn_x = _resident(plan.bn_split, device, dtype)[0]
        inputs.bn_x = bn_x.contiguous(memory_format=torch.channels_last) if plan.channels_last else bn_x
    if plan.fused:
        inputs.fused_y = _resident(data.train, device, dtype)[1]
    return inputs


@torch.no_grad()
def run_plan(plan: EvalPlan, model: nn.Module, vectors: torch.Tensor, data, *, forward: Forward | None = None,
             bufs: Mapping | None = None, quiet: bool = True) -> Evaluation:
    """Run `plan` on `vectors` ([K, P], or one [P] vector): chunk by chunk, with a progress bar unless `quiet`.

    `bufs`: the buffers of every vector when the plan does not recompute BN statistics (default: the
    module's own). When the plan's vmap is refused by the model (on the first chunk), the chunks run as a
    loop instead; ``result["engine"]["vmap_fallback"]`` says why.
    """
    from ..utils import keep_freed_memory, progress

    vectors = vectors.detach().reshape(-1, vectors.shape[-1])
    num = vectors.shape[0]
    if plan.device.type == "cpu":
        keep_freed_memory()
    inputs = _prepare_inputs(plan, data)
    use_vmap = plan.method == "vmap"
    fell_back = None
    chunks = []
    bar = progress(total=num, desc="evaluate", quiet=quiet, unit="vec")
    start = 0
    while start < num:
        stop = min(start + plan.chunk_size, num)
        try:
            chunks.append(_evaluate_chunk(plan, model, vectors[start:stop], data, inputs, use_vmap, forward, bufs))
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
            if not use_vmap or chunks:  # vmap refused this model (first chunk): fall back to the loop
                raise
            fell_back = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            use_vmap = False
            continue
        bar.update(stop - start)
        start = stop
    bar.close()

    values, accuracy = _results(plan, chunks)
    values["engine"] = {"method": "vmap" if use_vmap else "loop", "chunk_size": plan.chunk_size,
                        "eval_batch": plan.eval_batch, "passes": plan.passes, "channels_last": plan.channels_last,
                        "bn_recomputed": plan.recompute,
                        "bn_pass": ("fused" if plan.fused else "separate") if plan.recompute else None,
                        "bn_subset": plan.bn_subset if plan.recompute else None,
                        "bn_batch_size": plan.bn_batch if plan.recompute else None,
                        "memory_budget": plan.memory_budget, "device": str(plan.device), "vmap_fallback": fell_back}
    return Evaluation(values, accuracy, replace(plan, bn_split=None))


def evaluate_vectors(model: nn.Module, vectors: torch.Tensor, data, *, splits=("train", "test"),
                     recompute: bool | None = None, bn_subset: int | None = None, batch_size: int | None = None,
                     calibration: bool = False, return_probs: tuple[str, ...] = (), forward: Forward | None = None,
                     quiet: bool = True, memory_budget: int | None = None, chunk_size: int | None = None,
                     eval_batch: int | None = None, method: str = "auto",
                     channels_last: bool | None = None) -> Evaluation:
    """Metrics of many parameter vectors (shape [K, P]) on the given splits: ``run_plan(plan_evaluation(...))``.

    Returns an :class:`Evaluation`: ``{"<split>_loss": [K], "<split>_error": [K]}`` (float64 tensors; error as
    a fraction), plus ``<split>_nll/_ece/_brier`` when `calibration`, and ``probs[<split>]`` ([K, N, C]) for
    splits in `return_probs`, and ``labels[<split>]``. BN statistics are recomputed per vector on the
    training data (or a fixed subset of `bn_subset` examples) when the model has BatchNorm (`recompute=None`
    means "if it has BN"), exactly as :func:`bn_buffers_for` does: one pass in batches of `batch_size`,
    cumulative average. Losses are the mean NLL of the true class (probabilities clamped at 1e-12 as in
    :func:`lowloss.metrics.nll`). For regression data (``data.task == "regression"``) the loss is the mean
    squared error, the objective the regression modes and curves are trained with (a Gaussian likelihood of
    fixed sigma has NLL = MSE / (2 sigma^2) + const: the same minimisers, and a positive number that log-scale
    planes can draw), and the error is its square root (RMSE, in the targets' units); there is no accuracy,
    no calibration metric and no probabilities: ``outputs[<split>]`` ([K, N, ...] float32 predictions) for
    splits in `return_probs`.

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
    plan = plan_evaluation(model, vectors, data, splits=splits, recompute=recompute, bn_subset=bn_subset,
                           batch_size=batch_size, calibration=calibration, return_probs=return_probs,
                           forward=forward, memory_budget=memory_budget, chunk_size=chunk_size,
                           eval_batch=eval_batch, method=method, channels_last=channels_last)
    return run_plan(plan, model, vectors, data, forward=forward, quiet=quiet)


@torch.no_grad()
def predict_outputs(model: nn.Module, vectors: torch.Tensor, x: torch.Tensor, *, forward: Forward | None = None,
                    bufs: Mapping | None = None, chunk_size: int | None = None, method: str = "auto") -> torch.Tensor:
    """The network's outputs at each of `vectors` ([K, P]) on the inputs `x` ([N, ...]): [K, N, ...] float32.

    What a regression figure draws (the predictive functions on a grid of inputs, not a data split): eval
    mode, the buffers `bufs` (default: the module's own; no BN statistics pass), chunks of vectors through the
    same vmapped or looped call as :func:`evaluate_vectors`.
    """
    from ..utils import LowlossError

    if method not in ("auto", "vmap", "loop"):
        raise LowlossError(f"predict_outputs method '{method}' is not auto, vmap or loop")
    vectors = vectors.detach().reshape(-1, vectors.shape[-1])
    x = _cast(x.to(vectors.device), vectors.dtype)
    use_vmap = (choose_method(model, vectors.device) if method == "auto" else method) == "vmap"
    k = max(1, min(int(chunk_size or MAX_CHUNK), vectors.shape[0]))
    outs = []
    with eval_mode(model):
        for i in range(0, vectors.shape[0], k):
            chunk = vectors[i:i + k]
            runner = _Runner(model, chunk, forward, use_vmap)
            batched, shared = _bn_buffer_split(model, vectors.device, vectors.dtype, chunk.shape[0], False, bufs)
            if not use_vmap:
                shared = [shared] * chunk.shape[0]
            outs.append(runner(batched, shared, x).float())
    return torch.cat(outs)


def _evaluate_chunk(plan: EvalPlan, model, chunk, data, inputs: _Inputs, use_vmap: bool, forward, bufs):
    """One chunk of vectors through the plan's passes: its accumulator (:class:`_Sums` or :class:`_Outputs`)."""
    k = chunk.shape[0]
    device, dtype = chunk.device, chunk.dtype
    channels_last = plan.channels_last and not use_vmap
    runner = _Runner(model, chunk, forward, use_vmap, channels_last)
    batched, shared = _bn_buffer_split(model, device, dtype, k, plan.recompute, bufs)
    if not use_vmap:  # each vector counts its own BN batches
        shared = [{n: b.clone() for n, b in shared.items()} for _ in range(k)]
    if plan.scores == "probs":
        acc = _Outputs(k, plan.splits)
    else:
        acc = _Sums(k, plan.splits, plan.keep, plan.regression, device)
    if plan.recompute:
        bn_x, batch_size = inputs.bn_x, plan.bn_batch
        with bn_statistics_mode(model):
            if inputs.fused_y is not None:  # one batch = the whole training set: its outputs are the train metrics
                acc.add("train", runner(batched, shared, bn_x), inputs.fused_y)
            elif bn_x is not None:
                for i in range(0, len(bn_x), batch_size):
                    runner(batched, shared, bn_x[i:i + batch_size])
            else:
                for x, _y in plan.bn_split.batches(batch_size, device=device):
                    runner(batched, shared, _layout(_cast(x, dtype), channels_last))
    b_eval = plan.eval_batch
    with eval_mode(model):
        if inputs.eval_set is not None:
            xs, ys, bounds = inputs.eval_set
            for i in range(0, len(ys), b_eval):
                j = min(i + b_eval, len(ys))
                outb = runner(batched, shared, xs[i:j])
                for s, lo, hi in zip(plan.eval_splits, bounds[:-1], bounds[1:]):
                    a, b = max(lo, i), min(hi, j)
                    if a < b:
                        acc.add(s, outb[:, a - i:b - i], ys[a:b])
        else:
            for s in plan.eval_splits:
                for x, y in getattr(data, s).batches(b_eval, device=device):
                    acc.add(s, runner(batched, shared, _layout(_cast(x, dtype), channels_last)), y)
    return acc
