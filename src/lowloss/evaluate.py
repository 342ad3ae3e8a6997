"""Evaluation of a model at parameter vectors: predictions, losses and metrics.

Every feature that evaluates networks goes through here (curve points, grid points, simplex samples,
ensemble members). The module is never copied or rebuilt per vector; its mode is switched to eval
for the call and restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import nn

from . import metrics as M
from .params import Forward, functional_forward, has_batchnorm, recompute_bn

EVAL_BATCH = 1024


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


def bn_buffers_for(model: nn.Module, vector: torch.Tensor, train_split, *, batch_size: int = EVAL_BATCH,
                   bn_subset: int | None = None, device=None, forward: Forward | None = None):
    """BN statistics for `vector` from the training data (or a fixed subset); None when the model has no BN."""
    if not has_batchnorm(model):
        return None
    split = train_split.subset(bn_subset) if bn_subset else train_split
    device = device if device is not None else vector.device
    return recompute_bn(model, vector, split.batches(batch_size, device=device), forward=forward)


def predict_probs(model: nn.Module, vector: torch.Tensor, split, **kw):
    logits, y = predict_logits(model, vector, split, **kw)
    return torch.softmax(logits.double(), -1), y


def evaluate_vector(model: nn.Module, vector: torch.Tensor, data, *, bufs: Mapping | None = None,
                    recompute: bool = False, batch_size: int = EVAL_BATCH, splits=("train", "test"),
                    forward: Forward | None = None) -> dict:
    """{split: {loss, accuracy, nll, ece, brier}} for one parameter vector (BN recomputed if asked)."""
    if recompute:
        bufs = bn_buffers_for(model, vector, data.train, batch_size=batch_size, forward=forward) or bufs
    out = {}
    for name in splits:
        split = getattr(data, name)
        probs, y = predict_probs(model, vector, split, bufs=bufs, batch_size=batch_size, forward=forward)
        m = M.classification_metrics(probs, y)
        out[name] = {"loss": m["nll"], **m}
    return out


def evaluate_vectors(model: nn.Module, vectors: torch.Tensor, data, *, splits=("train", "test"),
                     recompute: bool | None = None, bn_subset: int | None = None, batch_size: int = EVAL_BATCH,
                     calibration: bool = False, return_probs: tuple[str, ...] = (), forward: Forward | None = None,
                     quiet: bool = True) -> dict:
    """Metrics of many parameter vectors (shape [K, P]) on the given splits: the shared evaluation engine.

    Returns ``{"<split>_loss": [K], "<split>_error": [K]}`` (float64 tensors; error as a fraction), plus
    ``<split>_nll/_ece/_brier`` when `calibration`, and ``probs[<split>]`` ([K, N, C]) for splits in
    `return_probs`, and ``labels[<split>]``. BN statistics are recomputed per vector on the training data
    (or a fixed subset of `bn_subset` examples) when the model has BatchNorm (`recompute=None` means
    "if it has BN").
    """
    from .utils import progress

    vectors = vectors.reshape(-1, vectors.shape[-1])
    k = vectors.shape[0]
    if recompute is None:
        recompute = has_batchnorm(model)
    out: dict = {"probs": {}, "labels": {}}
    for s in splits:
        out[f"{s}_loss"] = torch.zeros(k, dtype=torch.float64)
        out[f"{s}_error"] = torch.zeros(k, dtype=torch.float64)
        if calibration:
            for m in ("nll", "ece", "brier"):
                out[f"{s}_{m}"] = torch.zeros(k, dtype=torch.float64)
    probs_keep = {s: [] for s in return_probs}
    for i in progress(range(k), desc="evaluate", quiet=quiet, unit="vec"):
        v = vectors[i]
        bufs = bn_buffers_for(model, v, data.train, batch_size=batch_size, bn_subset=bn_subset,
                              forward=forward) if recompute else None
        for s in splits:
            probs, y = predict_probs(model, v, getattr(data, s), bufs=bufs, batch_size=batch_size, forward=forward)
            out[f"{s}_loss"][i] = M.nll(probs, y)
            out[f"{s}_error"][i] = 1.0 - M.accuracy(probs, y)
            if calibration:
                out[f"{s}_nll"][i] = out[f"{s}_loss"][i]
                out[f"{s}_ece"][i] = M.ece(probs, y)
                out[f"{s}_brier"][i] = M.brier(probs, y)
            if s in probs_keep:
                probs_keep[s].append(probs.float().cpu())
            out["labels"][s] = y.cpu()
    for s, lst in probs_keep.items():
        out["probs"][s] = torch.stack(lst)
    return out
