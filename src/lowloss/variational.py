"""Variational dropout layers and variance layers (Kingma et al. 2015; Molchanov et al. 2017;
Neklyudov et al. 2018), and :func:`to_variational`, which turns an ordinary model into its variational
version without rewriting it.

Posteriors over each weight ``w_ij`` of a dense or convolutional layer (``POSTERIORS``):

* ``weight``   q(w_ij) = N(mu_ij, alpha_ij mu_ij^2)    one log alpha per weight (sparse VD)
* ``neuron``   q(w_ij) = N(mu_ij, alpha_j mu_ij^2)     one log alpha per output unit / channel
* ``layer``    q(w_ij) = N(mu_ij, alpha mu_ij^2)       one log alpha per layer
* ``additive`` q(w_ij) = N(mu_ij, sigma_ij^2)          log sigma^2 free (additive reparameterisation);
  its log alpha is log sigma^2 - log mu^2
* ``variance`` q(w_ij) = N(0, sigma_ij^2)              a variance layer: the mean is fixed at zero
* ``dropout``  q(w_ij) = N(mu_ij, alpha mu_ij^2), alpha = p / (1 - p) fixed: plain Gaussian dropout
  (independent multiplicative weight noise, Kingma et al.'s "variational dropout B" with alpha not learned)

Biases are ordinary (deterministic) parameters in every case. The prior is the log-uniform
p(|w|) ~ 1/|w|; its KL divergence is :func:`kl_log_uniform` (Molchanov et al.'s approximation,
normalised so that KL -> 0 as alpha -> infinity). For a variance layer the KL is a constant, which is
exactly that limit: we count it as 0, so ELBOs of all posteriors are on the same scale. For the
``dropout`` baseline the KL is the constant ``kl_log_uniform(log(p / (1 - p)))`` per weight; it has no
gradient and is reported in the ELBO only.

Every layer has a ``mode`` (see :func:`set_mode` / :func:`prediction_mode`):

* ``sample``  (default) the local reparameterisation trick: per example, pre-activations are drawn
  from N(x mu, x^2 sigma^2) (for convolutions: conv(x, mu) and conv(x^2, sigma^2)) instead of drawing
  weights; a variance layer outputs bias + sqrt(x^2 sigma^2 + 1e-16) * eps.
* ``weights`` draw one weight tensor w ~ q(w) per forward call, shared by the whole batch (slower to
  train; the ground truth the local reparameterisation is tested against).
* ``mean``    deterministic: the weights are E w (mu, or 0 for a variance layer, whose output is then
  the bias alone).

Sampling uses torch's global generator (seeded by :func:`lowloss.utils.seed_everything`).

Two LeNet-5s with BatchNorm for the variance-network experiments are here as model factories:
``--model lowloss.variational:lenet5_ref`` (20-50-500) and ``--model lowloss.variational:lenet5_bn``
(6-16-120-84).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .utils import LowlossError

POSTERIORS = ("weight", "neuron", "layer", "additive", "variance", "dropout")
MODES = ("sample", "weights", "mean")

# Molchanov, Ashukha & Vetrov (2017), eq. 14: -KL ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1
K1, K2, K3 = 0.63576, 1.87320, 1.48695
# E log|z| for z ~ N(0, 1) is -(gamma + log 2) / 2: the exact constant that makes KL -> 0 as alpha -> inf
EXACT_KL_CONSTANT = (0.5772156649015329 + math.log(2.0)) / 2
STD_EPS = 1e-16          # added to the output variance before the square root (reference value)
LOG_ALPHA_MAX = 30.0     # only guards exp() against overflow; far beyond any value training reaches


def kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu, alpha mu^2) || log-uniform) in nats, Molchanov et al.'s approximation.

    KL ~ k1 - k1 sigmoid(k2 + k3 log alpha) + 0.5 log(1 + 1/alpha); about 3.1367, 0.4312, 0.003415 and
    2.27e-5 at log alpha = -5, 0, 5, 10. Independent of mu, positive, decreasing to 0 as alpha -> inf.
    """
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def kl_log_uniform_mc(log_alpha: float, num_samples: int = 1_000_000,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """Monte Carlo KL(N(mu, alpha mu^2) || log-uniform) with the same normalisation (KL -> 0 as alpha -> inf).

    KL = -0.5 log alpha + E_{z ~ N(0,1)} log|1 + sqrt(alpha) z| + (gamma + log 2) / 2  (Kingma et al. 2015,
    up to the constant that the improper prior leaves free). Returns (estimate, standard error), float64.
    """
    z = torch.randn(num_samples, dtype=torch.float64, generator=generator)
    v = torch.log(torch.abs(1.0 + math.exp(0.5 * log_alpha) * z))
    est = -0.5 * log_alpha + v.mean().item() + EXACT_KL_CONSTANT
    return est, (v.std() / math.sqrt(num_samples)).item()


class _VariationalLayer(nn.Module):
    """Shared machinery of :class:`VariationalLinear` and :class:`VariationalConv2d`."""

    def _setup(self, weight_shape: tuple[int, ...], bias: bool, posterior: str, log_alpha_init: float,
               log_sigma2_init: float | None, dropout_p: float) -> None:
        if posterior not in POSTERIORS:
            raise LowlossError(f"unknown posterior '{posterior}'; valid: {', '.join(POSTERIORS)}")
        if not 0.0 < dropout_p < 1.0:
            raise LowlossError(f"dropout_p must be in (0, 1), got {dropout_p}")
        self.posterior = posterior
        self.mode = "sample"
        self.weight_shape = tuple(weight_shape)
        out = weight_shape[0]
        fan_in = math.prod(weight_shape[1:])
        if posterior != "variance":
            self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(out)) if bias else None
        if posterior in ("weight", "neuron", "layer"):
            # layer-wise: shape (1,), not (): lowloss.params reshapes vectors into parameters with reshape(*shape)
            shape = {"weight": weight_shape, "neuron": (out,), "layer": (1,)}[posterior]
            self.log_alpha = nn.Parameter(torch.full(shape, float(log_alpha_init)))
        elif posterior == "dropout":
            self.register_buffer("log_alpha", torch.tensor(math.log(dropout_p / (1.0 - dropout_p))))
        else:  # additive, variance: log sigma^2 per weight (variance, fresh: sigma = |w| of torch's default init)
            init = math.log(1.0 / (3 * fan_in)) if log_sigma2_init is None else float(log_sigma2_init)
            self.log_sigma2 = nn.Parameter(torch.full(weight_shape, init))
        self.log_sigma2_init = log_sigma2_init
        self.log_alpha_init = float(log_alpha_init)
        self.dropout_p = float(dropout_p)

    def reset_parameters(self) -> None:
        """Fresh initialisation: mu as torch's default for the layer type; variances as configured."""
        fan_in = math.prod(self.weight_shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        if hasattr(self, "weight"):
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        if self.posterior == "additive":
            self.init_additive_sigma()
        if self.posterior == "variance" and self.log_sigma2_init is None:
            w = nn.init.kaiming_uniform_(torch.empty(self.weight_shape), a=math.sqrt(5))
            self.init_variance_sigma(w)

    @torch.no_grad()
    def init_variance_sigma(self, w: torch.Tensor) -> None:
        """Variance layer: sigma = |w| of a given (random or pretrained) weight tensor. Random magnitudes
        break the symmetry between units, which identical initial variances would not (all units of a layer
        would then be equal in distribution and only the noise could tell them apart)."""
        self.log_sigma2.copy_(torch.log(w.to(self.log_sigma2) ** 2 + 1e-12))

    @torch.no_grad()
    def init_additive_sigma(self) -> None:
        """Additive posterior: start at sigma^2 = alpha_init mu^2 (the same start as the alpha posteriors)."""
        self.log_sigma2.copy_(self.log_alpha_init + torch.log(self.weight ** 2 + 1e-8))

    # ------------------------------------------------------------------ the posterior
    def weight_mean(self) -> torch.Tensor:
        """E w: mu, or zeros for a variance layer."""
        if self.posterior == "variance":
            return self.log_sigma2.new_zeros(self.weight_shape)
        return self.weight

    def weight_log_alpha(self) -> torch.Tensor | None:
        """log alpha = log(sigma^2 / mu^2) for every weight (weight-shaped); None for a variance layer (+inf)."""
        if self.posterior == "variance":
            return None
        if self.posterior == "additive":
            return self.log_sigma2 - torch.log(self.weight ** 2 + 1e-8)
        la = self.log_alpha
        if self.posterior == "neuron":
            la = la.reshape(-1, *([1] * (len(self.weight_shape) - 1)))
        return la.expand(self.weight_shape)

    def weight_var(self) -> torch.Tensor:
        """sigma^2 of every weight."""
        if self.posterior in ("additive", "variance"):
            return torch.exp(self.log_sigma2)
        return torch.exp(self.weight_log_alpha().clamp(max=LOG_ALPHA_MAX)) * self.weight ** 2

    def kl(self) -> torch.Tensor:
        """KL(q || log-uniform prior) of this layer's weights, in nats (0 for a variance layer)."""
        if self.posterior == "variance":
            return self.log_sigma2.new_zeros(())
        if self.posterior in ("weight", "additive"):
            return kl_log_uniform(self.weight_log_alpha()).sum()
        n = math.prod(self.weight_shape)
        if self.posterior == "neuron":
            return kl_log_uniform(self.log_alpha).sum() * (n // self.weight_shape[0])
        return kl_log_uniform(self.log_alpha).sum() * n  # layer, dropout (a constant for dropout)

    # ------------------------------------------------------------------ forward
    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "mean":
            if self.posterior == "variance":  # zero weights: the output is the bias alone
                out = self._op(x, self.weight_mean(), self.bias)
                return out
            return self._op(x, self.weight, self.bias)
        var = self.weight_var()
        if mode == "weights":
            w = self.weight_mean() + var.sqrt() * torch.randn_like(var)
            return self._op(x, w, self.bias)
        if mode != "sample":
            raise LowlossError(f"unknown mode '{mode}'; valid: {', '.join(MODES)}")
        out_var = self._op(x * x, var, None)
        noise = torch.sqrt(out_var + STD_EPS) * torch.randn_like(out_var)
        if self.posterior == "variance":
            if self.bias is None:
                return noise
            return noise + self.bias.reshape(-1, *([1] * (out_var.dim() - 2)))
        return self._op(x, self.weight, self.bias) + noise

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, posterior={self.posterior}, mode={self.mode}"


class VariationalLinear(_VariationalLayer):
    """A dense layer with a factorised Gaussian posterior over its weights (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, posterior: str = "weight",
                 log_alpha_init: float = -5.0, log_sigma2_init: float | None = None, dropout_p: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._setup((out_features, in_features), bias, posterior, log_alpha_init, log_sigma2_init, dropout_p)
        self.reset_parameters()

    def _op(self, x, w, b):
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, posterior={self.posterior}"


class VariationalConv2d(_VariationalLayer):
    """A 2-D convolution with a factorised Gaussian posterior; the local reparameterisation samples every
    output pixel independently (mean conv(x, mu), variance conv(x^2, sigma^2))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, posterior: str = "weight", log_alpha_init: float = -5.0,
                 log_sigma2_init: float | None = None, dropout_p: float = 0.5):
        super().__init__()
        ks = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, ks
        self.stride, self.dilation, self.groups = nn.modules.utils._pair(stride), nn.modules.utils._pair(dilation), groups
        self.padding = padding if isinstance(padding, str) else nn.modules.utils._pair(padding)
        self._setup((out_channels, in_channels // groups, *ks), bias, posterior, log_alpha_init, log_sigma2_init,
                    dropout_p)
        self.reset_parameters()

    def _op(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, posterior={self.posterior}")


VARIATIONAL_TYPES = (VariationalLinear, VariationalConv2d)


def variational_from(module: nn.Module, posterior: str, *, from_weights: bool = True, log_alpha_init: float = -5.0,
                     log_sigma2_init: float | None = None, dropout_p: float = 0.5) -> _VariationalLayer:
    """The variational version of one nn.Linear / nn.Conv2d, with mu (and the bias) copied from it when
    `from_weights` (otherwise freshly initialised). The given module is not modified."""
    kw = dict(posterior=posterior, log_alpha_init=log_alpha_init, log_sigma2_init=log_sigma2_init,
              dropout_p=dropout_p)
    if isinstance(module, nn.Linear):
        new = VariationalLinear(module.in_features, module.out_features, module.bias is not None, **kw)
    elif isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise LowlossError(f"conv layer {module} uses padding_mode='{module.padding_mode}'; variational "
                               "convolutions support only zero padding")
        new = VariationalConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                module.padding, module.dilation, module.groups, module.bias is not None, **kw)
    else:
        raise LowlossError(f"cannot make {type(module).__name__} variational (only nn.Linear and nn.Conv2d)")
    new = new.to(device=module.weight.device, dtype=module.weight.dtype)
    if from_weights:
        with torch.no_grad():
            if hasattr(new, "weight"):
                new.weight.copy_(module.weight)
            if new.bias is not None:
                new.bias.copy_(module.bias)
            if posterior == "additive":
                new.init_additive_sigma()
            if posterior == "variance" and log_sigma2_init is None:
                new.init_variance_sigma(module.weight)
    return new


def to_variational(model: nn.Module, posterior: str, *, from_weights: bool = True, log_alpha_init: float = -5.0,
                   log_sigma2_init: float | None = None, dropout_p: float = 0.5,
                   skip: tuple[str, ...] = (), last_posterior: str | None = None,
                   layers: Sequence[int | str] | None = None) -> nn.Module:
    """A copy of `model` whose nn.Linear and nn.Conv2d layers are variational; everything else is kept.

    Walks the module tree of a deep copy (the user's module is left untouched) and replaces every
    Linear / Conv2d whose qualified name is not in `skip` by a :class:`VariationalLinear` /
    :class:`VariationalConv2d` with the same shape, initialised from the original weights (or fresh when
    `from_weights` is False). Works for mlp, convnet, lenet5 and any module built from these layers.

    `last_posterior` gives the last such layer (in module order: the classifier of the zoo models) its
    own posterior, or "plain" to keep it an ordinary point-estimate layer. A variance network needs this:
    with zero-mean weights in the output layer the logits of an input are symmetric around the bias, so
    P(argmax = y) <= P(argmin != y) and one-sample accuracy can never exceed 50%.

    `layers` converts only some layers: ints are 1-based positions among the Linear/Conv2d layers in module
    order (the first convolution is 1), strings qualified names; the others stay ordinary layers. The last layer
    is converted when listed, or when `last_posterior` names a posterior.
    """
    if posterior not in POSTERIORS:
        raise LowlossError(f"unknown posterior '{posterior}'; valid: {', '.join(POSTERIORS)}")
    if last_posterior not in (None, "plain", *POSTERIORS):
        raise LowlossError(f"unknown last-layer posterior '{last_posterior}'; valid: plain, {', '.join(POSTERIORS)}")
    candidates = [n for n in convertible_layers(model) if n not in skip]
    convert = set(candidates if layers is None else select_layers(candidates, layers))
    last = candidates[-1] if candidates else None
    own_last = last_posterior not in (None, "plain")  # the last layer gets last_posterior
    if last_posterior == "plain":
        convert.discard(last)
    elif own_last:
        convert.add(last)
    new = copy.deepcopy(model)
    replaced = []

    def walk(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}{name}"
            if isinstance(child, VARIATIONAL_TYPES):
                continue
            if isinstance(child, (nn.Linear, nn.Conv2d)) and full in convert:
                post = last_posterior if own_last and full == last else posterior
                setattr(parent, name, variational_from(child, post, from_weights=from_weights,
                                                       log_alpha_init=log_alpha_init,
                                                       log_sigma2_init=log_sigma2_init, dropout_p=dropout_p))
                replaced.append(full)
            else:
                walk(child, f"{full}.")

    walk(new, "")
    if not replaced and candidates:
        raise LowlossError(f"no layer of {type(model).__name__} is left to make variational: layers={list(layers or [])} "
                           f"and last_posterior={last_posterior!r} exclude all of {', '.join(candidates)}")
    if not replaced:
        raise LowlossError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to make variational; "
                           "build the model from those layers or use VariationalLinear/VariationalConv2d directly")
    new.variational_layer_names = tuple(replaced)
    return new


def select_layers(candidates: Sequence[str], layers: Sequence[int | str]) -> list[str]:
    """Qualified names of `layers` (ints: 1-based positions in `candidates`; strings: names from it), in module
    order."""
    listing = ", ".join(f"{i}={n}" for i, n in enumerate(candidates, 1))
    chosen = set()
    for item in layers:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 1 <= item <= len(candidates):
                raise LowlossError(f"layer {item} does not exist: the model's dense/conv layers are {listing}")
            chosen.add(candidates[item - 1])
        elif item in candidates:
            chosen.add(item)
        else:
            raise LowlossError(f"unknown layer '{item}': the model's dense/conv layers are {listing}")
    if not chosen:
        raise LowlossError(f"no layer selected; the model's dense/conv layers are {listing}")
    return [n for n in candidates if n in chosen]


def convertible_layers(model: nn.Module) -> list[str]:
    """Qualified names of the nn.Linear / nn.Conv2d layers :func:`to_variational` can convert, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            and not isinstance(m, VARIATIONAL_TYPES)]


def variational_layers(model: nn.Module) -> list[tuple[str, _VariationalLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, VARIATIONAL_TYPES)]


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Total KL(q || log-uniform prior) of all variational layers, in nats."""
    layers = variational_layers(model)
    if not layers:
        raise LowlossError("the model has no variational layers: convert it with lowloss.variational.to_variational")
    return torch.stack([m.kl() for _, m in layers]).sum()


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch every variational layer to `mode` ("sample", "weights" or "mean")."""
    if mode not in MODES:
        raise LowlossError(f"unknown mode '{mode}'; valid: {', '.join(MODES)}")
    for _, m in variational_layers(model):
        m.mode = mode


@contextlib.contextmanager
def prediction_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily switch every variational layer to `mode`; the previous modes are restored on exit."""
    saved = [(m, m.mode) for _, m in variational_layers(model)]
    set_mode(model, mode)
    try:
        yield model
    finally:
        for m, old in saved:
            m.mode = old


@torch.no_grad()
def layer_statistics(model: nn.Module) -> dict[str, dict]:
    """Per variational layer: posterior, number of weights, log alpha summary and the fraction of weights
    with log alpha > 3 (SNR |mu|/sigma < 0.22: information carried by the variance, not the mean)."""
    out = {}
    for name, m in variational_layers(model):
        la = m.weight_log_alpha()
        n = math.prod(m.weight_shape)
        if la is None:
            out[name] = {"posterior": m.posterior, "num_weights": n, "log_alpha_median": float("inf"),
                         "frac_log_alpha_gt_3": 1.0, "log_sigma2_mean": m.log_sigma2.mean().item()}
            continue
        la = la.detach().double().reshape(-1).cpu()
        out[name] = {"posterior": m.posterior, "num_weights": n, "log_alpha_mean": la.mean().item(),
                     "log_alpha_median": la.median().item(), "log_alpha_min": la.min().item(),
                     "log_alpha_max": la.max().item(), "frac_log_alpha_gt_3": (la > 3).double().mean().item()}
    return out


@torch.no_grad()
def log_alpha_per_layer(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per dense/conv layer, in module order: the per-weight log alpha (float64, flat), +inf for a variance layer
    and -inf for a layer left a point estimate."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, VARIATIONAL_TYPES):
            la = m.weight_log_alpha()
            n = math.prod(m.weight_shape)
            out[name] = (torch.full((n,), math.inf, dtype=torch.float64) if la is None
                         else la.reshape(-1).double().cpu())
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            out[name] = torch.full((m.weight.numel(),), -math.inf, dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------------------- model factories
class LeNet5BN(nn.Module):
    """LeNet-5 with BatchNorm after every hidden layer (conv/linear -> BN -> ReLU [-> max pool]), as in the
    variance-network experiments: BN re-centres and re-scales the zero-mean activations of variance layers,
    which is what lets them train. Pads the convolutions for inputs smaller than 32x32, like lowloss's lenet5.
    Use as ``--model lowloss.variational:lenet5_bn``."""

    def __init__(self, input_shape, num_classes, width: float = 1.0):
        super().__init__()
        c, h = input_shape[0], input_shape[1]
        c1, c2, f1, f2 = (max(1, int(round(k * width))) for k in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2 if h < 32 else 0, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2 if h < 16 else 0, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten())
        with torch.no_grad():
            d = self.features.eval()(torch.zeros(1, *input_shape)).shape[1]
        self.features.train()
        self.classifier = nn.Sequential(nn.Linear(d, f1, bias=False), nn.BatchNorm1d(f1), nn.ReLU(),
                                        nn.Linear(f1, f2, bias=False), nn.BatchNorm1d(f2), nn.ReLU(),
                                        nn.Linear(f2, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def lenet5_bn(input_shape, num_classes, width: float = 1.0) -> LeNet5BN:
    return LeNet5BN(input_shape, num_classes, width)


def lenet5_ref(input_shape, num_classes, width: float = 1.0) -> nn.Sequential:
    """The LeNet-5 of the variance-network experiments (Caffe's 20-50-500 LeNet with BatchNorm): conv 5x5 (20)
    -> BN -> ReLU -> max pool, conv 5x5 (50) -> BN -> ReLU -> max pool, dense 500 -> BN -> ReLU, dense
    num_classes. Hidden layers have no bias (BN's shift takes its place). Unpadded on 28x28 inputs (800
    features before the dense layer); padded for small inputs such as 8x8 digits. `width` scales 20/50/500.
    Use as ``--model lowloss.variational:lenet5_ref``."""
    c = input_shape[0]
    c1, c2, f1 = (max(1, int(round(k * width))) for k in (20, 50, 500))
    pad1 = 2 if min(input_shape[1:]) < 16 else 0
    s1 = [(k + 2 * pad1 - 4) // 2 for k in input_shape[1:]]
    pad2 = 2 if min(s1) < 8 else 0
    s2 = [(k + 2 * pad2 - 4) // 2 for k in s1]
    if min(s2) < 1:
        raise LowlossError(f"input {tuple(input_shape)} is too small for lenet5_ref")
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=pad1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=pad2, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * s2[0] * s2[1], f1, bias=False),
        nn.BatchNorm1d(f1), nn.ReLU(), nn.Linear(f1, num_classes))


__all__ = ["POSTERIORS", "MODES", "K1", "K2", "K3", "kl_log_uniform", "kl_log_uniform_mc", "VariationalLinear",
           "VariationalConv2d", "variational_from", "to_variational", "select_layers", "convertible_layers",
           "variational_layers", "kl_divergence",
           "set_mode", "prediction_mode", "layer_statistics", "log_alpha_per_layer", "LeNet5BN", "lenet5_bn", "lenet5_ref"]
