"""The one shape every subspace has: coordinates -> parameter vectors, plus a sampler."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Subspace(nn.Module):
    """Maps coordinates (shape [K, d]) to parameter vectors (shape [K, P]).

    Trainable pieces are ``nn.Parameter``s of the subspace (so ``subspace.parameters()`` is what a trainer
    optimises); fixed pieces are buffers. Subclasses implement :meth:`points` and :meth:`sample`.
    """

    dim: int = 1

    def points(self, coords: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def point(self, coords) -> torch.Tensor:
        """A single parameter vector for one coordinate (a float t, or a [d] tensor)."""
        c = torch.as_tensor(coords, dtype=self.dtype, device=self.device).reshape(1, -1)
        return self.points(c)[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n coordinates drawn from the subspace's training distribution, shape [n, d]."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(iter(self._control_tensors())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._control_tensors())).dtype

    def _control_tensors(self):
        yield from self.parameters()
        yield from self.buffers()


class LinearSubspace(Subspace):
    """A subspace whose points are linear combinations of control points: w(c) = sum_i a_i(c) p_i.

    Curves (Bezier, polygonal chains, lines) and simplexes are of this kind; they differ only in the
    coefficients a(c). Each control point is either fixed (a buffer, e.g. a trained mode) or trainable
    (an ``nn.Parameter``, e.g. a bend). No copy of the model is made per control point: the controls are
    flat vectors of the model's parameters.
    """

    def __init__(self, controls: Sequence[torch.Tensor], trainable: Sequence[bool]):
        super().__init__()
        if len(controls) != len(trainable):
            raise ValueError("one trainable flag per control point")
        sizes = {int(c.numel()) for c in controls}
        if len(sizes) != 1:
            raise ValueError(f"control points have different sizes {sorted(sizes)}: they must come from one architecture")
        self.num_controls = len(controls)
        self._names = []
        for i, (c, tr) in enumerate(zip(controls, trainable)):
            name = f"control_{i}"
            c = c.detach().reshape(-1).clone()
            if tr:
                self.register_parameter(name, nn.Parameter(c))
            else:
                self.register_buffer(name, c)
            self._names.append(name)
        self.trainable_mask = tuple(bool(t) for t in trainable)

    def control(self, i: int) -> torch.Tensor:
        return getattr(self, self._names[i])

    def controls(self) -> torch.Tensor:
        """All control points stacked, shape [n, P] (gradients reach the trainable ones)."""
        return torch.stack([self.control(i) for i in range(self.num_controls)])

    def coefficients(self, coords: torch.Tensor) -> torch.Tensor:
        """[K, d] coordinates -> [K, n] weights of the control points."""
        raise NotImplementedError

    def points(self, coords: torch.Tensor) -> torch.Tensor:
        a = self.coefficients(coords.to(self.dtype))
        return a @ self.controls()

    def set_control(self, i: int, value: torch.Tensor) -> None:
        with torch.no_grad():
            self.control(i).copy_(value.reshape(-1))
