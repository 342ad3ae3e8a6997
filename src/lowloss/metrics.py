"""Classification metrics on predictive probabilities, and temperature scaling.

Accuracies are fractions in [0, 1] everywhere in lowloss. Ensembles average *probabilities*
(softmax outputs), never logits.
"""

from __future__ import annotations

import torch

ECE_BINS = 15


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(-1) == labels).double().mean().item()


def nll(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean negative log predictive probability of the true class."""
    p = probs.double().gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return (-torch.log(p.clamp_min(eps))).mean().item()


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of sum_k (p_k - 1[y=k])^2 (the multi-class Brier score, in [0, 2])."""
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[-1]).double()
    return ((probs.double() - onehot) ** 2).sum(-1).mean().item()


def ece_bins(confidence: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """Equal-width bin index of each confidence: bin b holds (b/n, (b+1)/n]; exactly 1.0 is in the last bin
    and exactly 0 in the first (no hidden bin at either edge)."""
    return (torch.ceil(confidence.double() * n_bins) - 1).clamp(0, n_bins - 1).long()


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error with `n_bins` equal-width confidence bins (15 by default)."""
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    b = ece_bins(conf, n_bins)
    s_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, conf)
    s_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, correct)
    return ((s_acc - s_conf).abs().sum() / len(conf)).item()


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> dict:
    """Per-bin count, mean confidence and accuracy (for reliability diagrams)."""
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    b = ece_bins(conf, n_bins)
    n = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, torch.ones_like(conf))
    s_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, conf)
    s_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, correct)
    safe = n.clamp_min(1)
    return {"edges": torch.linspace(0, 1, n_bins + 1).tolist(), "count": n.long().tolist(),
            "confidence": (s_conf / safe).tolist(), "accuracy": (s_acc / safe).tolist()}


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, nll, ece (15 equal-width bins), brier."""
    probs, labels = probs.detach().cpu(), labels.detach().cpu()
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels), "ece": ece(probs, labels),
            "brier": brier(probs, labels)}


def ensemble_probs(prob_list) -> torch.Tensor:
    """Average predictive distribution of several members (list or stacked [M, N, C] tensor)."""
    if isinstance(prob_list, torch.Tensor):
        return prob_list.mean(0)
    return torch.stack(list(prob_list)).mean(0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017).

    For an ensemble pass log of the mean probabilities as `logits`. Optimised over log T with L-BFGS,
    in float64; never returns a T with higher NLL than T = 1 on the fitting data.
    """
    z = logits.detach().double().cpu()
    y = labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss_at(lt):
        return torch.nn.functional.cross_entropy(z / lt.exp(), y)

    def closure():
        opt.zero_grad()
        loss = loss_at(log_t)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        if not torch.isfinite(log_t) or loss_at(log_t) > loss_at(torch.zeros((), dtype=torch.float64)):
            return 1.0
        return float(log_t.exp())


def regression_metrics(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Gaussian test log-likelihood (mean per point), RMSE."""
    mean, var, y = mean.double().reshape(-1), var.double().reshape(-1), y.double().reshape(-1)
    ll = -0.5 * (torch.log(2 * torch.pi * var) + (y - mean) ** 2 / var)
    return {"test_ll": ll.mean().item(), "rmse": ((y - mean) ** 2).mean().sqrt().item()}
