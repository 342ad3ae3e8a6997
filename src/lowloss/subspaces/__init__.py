"""Subspaces of parameter space: coordinates -> full parameter vectors.

Each subspace is a small class: lines, Bezier curves and polygonal chains (t in [0,1]), simplexes and
simplicial complexes (barycentric coordinates), planes (x, y), SWAG Gaussians (z ~ N(0, I)).
"""

from .base import LinearSubspace, Subspace
from .curves import Bezier, Curve, Line, PolyChain, make_curve  # noqa: E402

__all__ = ["LinearSubspace", "Subspace"]
__all__ += ["Bezier", "Curve", "Line", "PolyChain", "make_curve"]
