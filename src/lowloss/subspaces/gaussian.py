"""The SWAG Gaussian as a subspace: coordinates z = (z1, z2) ~ N(0, I_{P+K}) -> parameter vectors.

    w(z) = mean + sqrt(scale) * ( sigma * z1 / sqrt(2) + D^T z2 / sqrt(2 (K - 1)) )

with sigma^2 = clamp(sq_mean - mean^2, 1e-30) (the diagonal part) and D the [K, P] matrix of the last K
deviations w_i - mean_i (the low-rank part). The implied covariance is
scale / 2 * (diag(sigma^2) + D^T D / (K - 1)); the P x P matrix is never formed. K is the number of
deviations actually collected; with K < 2 the low-rank part is dropped. ``diagonal=True`` gives SWAG-Diag,
w = mean + sqrt(scale) * sigma * z1 (covariance scale * diag(sigma^2)).
"""

from __future__ import annotations

import math

import torch

from .base import Subspace

VAR_CLAMP = 1e-30


class SwagGaussian(Subspace):
    """N(mean, scale/2 (diag(sigma^2) + D^T D / (K-1))) in parameter space, from SWAG's stored moments."""

    def __init__(self, mean: torch.Tensor, sq_mean: torch.Tensor, deviations: torch.Tensor | None = None,
                 scale: float = 0.5, diagonal: bool = False, var_clamp: float = VAR_CLAMP):
        super().__init__()
        mean = mean.detach().reshape(-1)
        if deviations is None or diagonal:
            deviations = mean.new_zeros(0, mean.numel())
        deviations = deviations.detach().reshape(-1, mean.numel())
        if scale < 0:
            raise ValueError("scale must be non-negative")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("sigma", (sq_mean.detach().reshape(-1).to(mean.dtype) - mean ** 2)
                             .clamp_min(var_clamp).sqrt())
        self.register_buffer("deviations", deviations.to(mean.dtype).clone())
        self.scale, self.diagonal = float(scale), bool(diagonal)
        self.rank = int(self.deviations.shape[0]) if self.deviations.shape[0] >= 2 else 0

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.mean.numel() + self.rank

    def points(self, coords: torch.Tensor) -> torch.Tensor:
        """[n, P + K] standard-normal coordinates -> [n, P] parameter vectors."""
        coords = coords.to(self.mean.dtype).reshape(-1, self.dim)
        p = self.mean.numel()
        z1, z2 = coords[:, :p], coords[:, p:]
        if self.diagonal:
            return self.mean + math.sqrt(self.scale) * self.sigma * z1
        w = self.sigma * z1 / math.sqrt(2.0)
        if self.rank:
            w = w + (z2 @ self.deviations[-self.rank:]) / math.sqrt(2.0 * (self.rank - 1))
        return self.mean + math.sqrt(self.scale) * w

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n coordinates from N(0, I) (drawn on the CPU so a CPU generator reproduces them on any device)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return z.to(device=self.mean.device, dtype=self.mean.dtype)

    def sample_vectors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.points(self.sample(n, generator))

    def covariance(self) -> torch.Tensor:
        """The implied P x P covariance (only for tests and tiny models)."""
        if self.diagonal:
            return self.scale * torch.diag(self.sigma ** 2)
        cov = torch.diag(self.sigma ** 2)
        if self.rank:
            d = self.deviations
            cov = cov + d.T @ d / (self.rank - 1)
        return 0.5 * self.scale * cov
