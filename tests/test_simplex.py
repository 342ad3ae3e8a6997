"""Simplex volumes (Cayley-Menger) and Dirichlet sampling: closed forms, invariances, edge cases."""

import math

import numpy as np
import pytest
import torch

from lowloss.subspaces.simplex import (
    Complex,
    cayley_menger_log_volume,
    dirichlet_ones,
    log_squared_volume_plus,
    pairwise_sq_dists,
    restrict_simplexes,
    simplex_log_volume,
)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 9])
def test_unit_right_angled_simplex(k):
    v = torch.cat([torch.zeros(1, k), torch.eye(k)]).double()
    assert simplex_log_volume(v).item() == pytest.approx(-math.lgamma(k + 1), abs=1e-12)


@pytest.mark.parametrize("k,a", [(1, 2.5), (2, 1.0), (3, 0.3), (5, 7.0), (8, 1e2)])
def test_regular_simplex_closed_form(k, a):
    # k+1 scaled unit vectors in R^(k+1) are pairwise a apart; then embed in more dimensions and shift
    v = torch.eye(k + 1, dtype=torch.float64) * a / math.sqrt(2)
    v = torch.cat([v, torch.zeros(k + 1, 5, dtype=torch.float64)], 1) + 3.0
    want = math.sqrt(k + 1) / (math.factorial(k) * math.sqrt(2**k)) * a**k
    assert simplex_log_volume(v).item() == pytest.approx(math.log(want), abs=1e-10)
    # directly from the squared distances as well (the Cayley-Menger input)
    d2 = torch.full((k + 1, k + 1), a * a, dtype=torch.float64).fill_diagonal_(0)
    assert cayley_menger_log_volume(d2).item() == pytest.approx(math.log(want), abs=1e-10)


def test_tetrahedron_matches_convex_hull():
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(0)
    for _ in range(5):
        pts = rng.normal(size=(4, 3)) * rng.uniform(0.1, 10)
        want = ConvexHull(pts).volume
        got = simplex_log_volume(torch.from_numpy(pts)).exp().item()
        assert got == pytest.approx(want, rel=1e-9)


def test_translation_and_rotation_invariance():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(4, 30, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    base = simplex_log_volume(v).item()
    assert simplex_log_volume(v + 1e3 * torch.randn(30, generator=g, dtype=torch.float64)).item() == \
        pytest.approx(base, abs=1e-6)
    assert simplex_log_volume(v @ q.T).item() == pytest.approx(base, abs=1e-10)
    # vertex order does not matter either
    assert simplex_log_volume(v[[2, 0, 3, 1]]).item() == pytest.approx(base, abs=1e-10)


def test_degenerate_is_minus_inf_not_nan():
    g = torch.Generator().manual_seed(2)
    a, d = torch.randn(50, generator=g), torch.randn(50, generator=g)
    collinear = torch.stack([a, a + d, a + 2.5 * d])
    assert simplex_log_volume(collinear).item() == -math.inf
    coplanar = torch.stack([a, a + d, a + 2 * d, a + 0.3 * d])
    assert simplex_log_volume(coplanar).item() == -math.inf
    repeated = torch.stack([a, a, a + d])
    assert simplex_log_volume(repeated).item() == -math.inf
    assert simplex_log_volume(torch.stack([a, a])).item() == -math.inf
    # a complex of degenerate simplexes too, and a nearly degenerate one stays finite
    c = Complex([a, a + d, a + 2 * d], [(0, 1, 2)])
    assert c.log_volume().item() == -math.inf
    e = torch.randn(50, generator=g, dtype=torch.float64)
    a64, d64 = a.double(), d.double()
    thin = torch.stack([a64, a64 + d64, a64 + 0.5 * d64 + 1e-4 * e])
    assert math.isfinite(simplex_log_volume(thin).item())


def test_far_apart_vertices_in_high_dimension_stay_finite():
    g = torch.Generator().manual_seed(3)
    p = 100_000
    v = torch.randn(5, p, generator=g) * (1e3 / math.sqrt(2 * p)) + 50.0  # pairwise distance ~ 1e3
    d = pairwise_sq_dists(v).sqrt()
    assert 900 < d[0, 1].item() < 1100
    lv = simplex_log_volume(v)
    # 4-simplex of edge ~1e3 with random (nearly orthogonal) edges: vol ~ (1e3)^4 / 4! / sqrt(2)^4-ish
    assert math.isfinite(lv.item()) and abs(lv.item() - (4 * math.log(1e3) - math.log(24))) < 3
    reg = log_squared_volume_plus([pairwise_sq_dists(v)])
    assert reg.item() == pytest.approx(2 * lv.item(), abs=1e-6)


def test_gradients_finite_and_correct():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: simplex_log_volume(x), (v,))
    torch.autograd.gradcheck(lambda x: log_squared_volume_plus([pairwise_sq_dists(x)]), (v,))
    # at a degenerate simplex (where a new vertex starts) the regulariser is finite with a finite gradient
    w = v.detach().clone()
    w[3] = w[:3].mean(0)
    w[2] = 0.5 * (w[0] + w[1])
    w.requires_grad_(True)
    r = log_squared_volume_plus([pairwise_sq_dists(w)])
    r.backward()
    assert r.item() == pytest.approx(math.log(1e-4), abs=1e-6) and torch.isfinite(w.grad).all()


def test_log_squared_volume_plus_matches_direct_formula():
    g = torch.Generator().manual_seed(5)
    v = torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.3
    c = Complex(list(v), [(0, 1, 2), (0, 3, 4, 5), (1, 4)])
    want = math.log(sum(math.exp(2 * lv) for lv in c.log_volumes().tolist()) + 1e-4)
    assert c.log_squared_volume_plus().item() == pytest.approx(want, abs=1e-10)
    # and the complex volume is the sum of simplex volumes
    assert c.log_volume().exp().item() == pytest.approx(c.log_volumes().exp().sum().item(), rel=1e-12)


def test_dirichlet_samples_on_simplex_and_mean_is_centroid():
    a = dirichlet_ones(200_000, 4, torch.Generator().manual_seed(0))
    assert (a >= 0).all() and torch.allclose(a.sum(1), torch.ones(len(a), dtype=a.dtype))
    assert torch.allclose(a.mean(0), torch.full((4,), 0.25, dtype=a.dtype), atol=3e-3)
    # Dirichlet(1,1,1,1): Var(alpha_i) = (1/4)(3/4)/5
    assert a.var(0).numpy() == pytest.approx(np.full(4, 0.75 / 4 / 5), rel=0.03)


def test_complex_sampling_points_lie_in_chosen_simplexes():
    g = torch.Generator().manual_seed(6)
    verts = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(5)]
    c = Complex(verts, [(0, 2, 3), (1, 2, 3, 4)], trainable=[False, False, True, True, True])
    coords = c.sample(40_000, torch.Generator().manual_seed(0))
    assert torch.allclose(coords.sum(1), torch.ones(len(coords), dtype=coords.dtype))
    first = coords[:, 1] == 0
    # every row is supported on exactly one simplex; simplexes are chosen uniformly
    assert ((coords[first][:, [1, 4]] == 0).all())
    assert first.double().mean().item() == pytest.approx(0.5, abs=0.01)
    pts = c.points(coords)
    assert torch.allclose(pts, coords @ torch.stack(verts))
    centroid = torch.stack(verts)[[0, 2, 3]].mean(0)
    assert torch.allclose(pts[first].mean(0), centroid, atol=0.02)
    # gradients reach the trainable vertices only
    c.points(coords[:3]).sum().backward()
    assert c.control(2).grad is not None and len(list(c.parameters())) == 3


def test_restrict_simplexes_and_errors():
    assert restrict_simplexes([(0, 2, 3), (1, 2, 3)], 3) == [(0, 2), (1, 2)]
    assert restrict_simplexes([(0, 2, 3), (1, 2, 3)], 2) == []
    with pytest.raises(ValueError):
        Complex([torch.zeros(3), torch.ones(3)], [(0, 2)])
    with pytest.raises(ValueError):
        Complex([torch.zeros(3), torch.ones(3)], [(0, 0)])
