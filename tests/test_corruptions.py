"""Image corruptions: determinism, shape/dtype/range, monotone severity, on 8x8 grey and 32x32 colour."""

import numpy as np
import pytest
import torch

import lowloss.corruptions as C
from lowloss.utils import LowlossError


def _grey8(n=8):
    from lowloss.data import load_dataset

    d = load_dataset("digits")
    mean, std = C.pixel_stats(d)
    return (d.test.x[:n].double() * std + mean).clamp(0, 1).float()


def _colour32(n=8):
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(0).random((n, 3, 32, 32)), (0, 0, 1, 1))
    lo, hi = x.min((2, 3), keepdims=True), x.max((2, 3), keepdims=True)
    return torch.from_numpy((x - lo) / (hi - lo)).float()


IMAGES = {"grey8": _grey8, "colour32": _colour32}
CASES = [(kind, name) for kind in IMAGES for name in C.applicable(3 if kind == "colour32" else 1)]


@pytest.fixture(scope="module")
def images():
    return {k: f() for k, f in IMAGES.items()}


def test_registry_has_the_cifar10c_list():
    want = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
            "motion_blur", "contrast", "brightness", "saturate", "pixelate", "jpeg", "elastic_transform", "fog"}
    assert want <= set(C.CORRUPTIONS)
    assert "saturate" not in C.applicable(1) and "saturate" in C.applicable(3)
    assert C.parse_corruptions("all", 1) == C.applicable(1)
    assert C.parse_severities("1-5") == [1, 2, 3, 4, 5] and C.parse_severities("1,3") == [1, 3]
    with pytest.raises(LowlossError, match="unknown corruption"):
        C.parse_corruptions("gaussian_noise,snowstorm")
    with pytest.raises(LowlossError, match="severities"):
        C.parse_severities("0-6")


@pytest.mark.parametrize("kind,name", CASES)
def test_deterministic_shape_dtype_range_and_monotone(images, kind, name):
    x = images[kind]
    dists, outs = [], []
    for s in C.SEVERITIES:
        y = C.corrupt_pixels(x, name, s, seed=3)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.equal(y, C.corrupt_pixels(x, name, s, seed=3)), "same seed, different output"
        outs.append(y)
        dists.append((y - x).double().pow(2).flatten(1).sum(1).sqrt().mean().item())
    assert dists[0] > 1e-4, f"{name} severity 1 does nothing"
    if name == "saturate":
        # published CIFAR-10-C schedule: severities 1-2 desaturate (x0.3, x0.1), 3-5 oversaturate (x1.5 .. x2.5+0.2)
        assert dists[1] > dists[0] and dists[2] < dists[3] < dists[4]
    elif name == "rotate":
        # a turn is not monotone in pixel distance (180 degrees can land closer than 90); the angle is
        assert list(C.ROTATE) == sorted(C.ROTATE) and C.ROTATE[-1] == 180 and min(dists) > 1e-3
    else:
        assert all(b >= a - 1e-9 for a, b in zip(dists, dists[1:])), f"{name}: distances {dists}"
        assert dists[-1] > dists[0]


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "motion_blur", "elastic_transform", "fog"])
def test_random_corruptions_depend_on_seed_not_on_batching(images, name):
    x = images["grey8"]
    full = C.corrupt_pixels(x, name, 3, seed=1)
    parts = torch.cat([C.corrupt_pixels(x[:5], name, 3, seed=1), C.corrupt_pixels(x[5:], name, 3, seed=1, index_offset=5)])
    assert torch.equal(full, parts)
    assert not torch.equal(full, C.corrupt_pixels(x, name, 3, seed=2))


def test_saturate_refuses_grey(images):
    with pytest.raises(LowlossError, match="colour"):
        C.corrupt_pixels(images["grey8"], "saturate", 1)
    with pytest.raises(LowlossError, match="colour"):
        C.parse_corruptions("saturate", 1)


def test_standardised_round_trip_and_range(digits):
    mean, std = C.pixel_stats(digits)
    x = digits.test.x[:8]
    y = C.corrupt(x, "contrast", 2, mean=mean, std=std)
    lo, hi = float(((0 - mean) / std).min()), float(((1 - mean) / std).max())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= lo - 1e-5 and float(y.max()) <= hi + 1e-5
    # contrast in pixel space: (p - m) * c + m per image, exactly
    p = (x.double() * std + mean).clamp(0, 1)
    m = p.mean((2, 3), keepdim=True)
    want = (((p - m) * C.CONTRAST[1] + m).clamp(0, 1) - mean) / std
    torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=0)
    split = C.corrupt_split(digits.test, digits, "gaussian_noise", 1, batch_size=100)
    assert len(split) == len(digits.test) and torch.equal(split.y, digits.test.y.cpu())
    torch.testing.assert_close(split.x[150:160], C.corrupt(digits.test.x[150:160], "gaussian_noise", 1,
                                                             mean=mean, std=std, index_offset=150))


def test_closed_forms():
    x = torch.full((2, 1, 8, 8), 0.5)
    # brightness on grey adds c; jpeg of a constant image is (almost) exact
    torch.testing.assert_close(C.corrupt_pixels(x, "brightness", 5), x + C.BRIGHTNESS[4])
    assert (C.corrupt_pixels(x, "jpeg", 5) - x).abs().max() <= 1 / 255 + 1e-6
    # blurs and pixelation keep a constant image constant (and its mean)
    for name in ("gaussian_blur", "defocus_blur", "motion_blur", "pixelate"):
        torch.testing.assert_close(C.corrupt_pixels(x, name, 5), x, atol=1e-6, rtol=0)
    # gaussian noise: x + c * z before clipping, so its std at 0.5 is c
    big = torch.full((1, 1, 256, 256), 0.5)
    d = C.corrupt_pixels(big, "gaussian_noise", 5) - big
    assert abs(float(d.std()) - C.GAUSSIAN_NOISE[4]) < 0.003
    # kernels are normalised
    assert abs(C.disk_kernel(1.5, 0.1).sum() - 1) < 1e-12 and abs(C.motion_kernel(10, 3, 30).sum() - 1) < 1e-12
    op = C.pixelate_operator(8, 1 / 0.65, 0.3)
    np.testing.assert_allclose(op.sum(1), 1.0)
    plasma = C.plasma_fractal(32, 2.0, np.random.default_rng(0))
    assert plasma.shape == (32, 32) and plasma.min() == 0 and plasma.max() == 1


def test_spatial_corruptions_run_at_the_32px_reference():
    # an 8x8 image replicated to 32x32 and blurred there, then block-averaged, equals the 8x8 result
    assert C.reference_factor(8) == 4 and C.reference_factor(32) == 1 and C.reference_factor(28) == 1
    x8 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x32 = x8.repeat_interleave(4, 2).repeat_interleave(4, 3)
    y32 = C.corrupt_pixels(x32, "gaussian_blur", 3)
    torch.testing.assert_close(C.corrupt_pixels(x8, "gaussian_blur", 3), y32.reshape(1, 1, 8, 4, 8, 4).mean((3, 5)))


def test_errors():
    with pytest.raises(LowlossError, match="severity"):
        C.corrupt_pixels(torch.zeros(1, 1, 8, 8), "fog", 6)
    with pytest.raises(LowlossError, match=r"\[N, C, H, W\]"):
        C.corrupt_pixels(torch.zeros(8, 8), "fog", 1)


def test_rotate_is_a_turn_about_the_centre():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 1, 4] = 1.0  # a dot above the centre
    half = C.corrupt_pixels(x, "rotate", 5)  # 180 degrees: below the centre
    assert half[0, 0, 7, 4] > 0.99 and half[0, 0, 1, 4] < 1e-6
    quarter = C.corrupt_pixels(x, "rotate", 3)  # 90 degrees: beside the centre
    assert quarter[0, 0, 4, 1] > 0.99 or quarter[0, 0, 4, 7] > 0.99


def test_signal_shifts_redraw_mnist1d_with_the_knobs_turned_up():
    from lowloss.data import load_mnist1d

    data = load_mnist1d()
    assert C.shift_names("all", data) == list(C.SIGNAL_SHIFTS)
    with pytest.raises(LowlossError):
        C.shift_names("gaussian_noise", data)
    split = C.shift_split(data.test.subset(50), data, "noise", 5, seed=1)
    assert split.x.shape == (50, 1, 40) and split.y.shape == (50,)
    assert torch.equal(split.x, C.shift_split(data.test.subset(50), data, "noise", 5, seed=1).x)
    # more noise at a higher severity: the signals' spread grows
    mild = C.shift_split(data.test.subset(200), data, "noise", 1).x.std()
    hard = C.shift_split(data.test.subset(200), data, "noise", 5).x.std()
    assert hard > mild
    for name, settings in C.SIGNAL_SHIFTS.items():
        assert len(settings) == 5, name
