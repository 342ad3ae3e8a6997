"""Code the benchmarks share: the plain per-point loop every engine rate is compared against."""

from __future__ import annotations

import copy

import torch

from lowloss import params as P


@torch.no_grad()
def plain_loop(model, vector, data, batch_size: int = 128) -> list[float]:
    """One point the obvious way, as the reference implementations evaluate it: write the vector into a copy of
    the module, recompute BN statistics in batches, then evaluate train and test in batches: [train loss, train
    error, test loss, test error]."""
    m = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(vector, [p for p in m.parameters() if p.requires_grad])
    if P.has_batchnorm(m):
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        m.train()
        for x, _ in data.train.batches(batch_size):
            m(x)
    m.eval()
    out = []
    for split in (data.train, data.test):
        loss, wrong, n = 0.0, 0, 0
        for x, y in split.batches(batch_size):
            logits = m(x)
            loss += torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum").item()
            wrong += (logits.argmax(-1) != y).sum().item()
            n += len(y)
        out += [loss / n, wrong / n]
    return out
