import math

import pytest
import torch

from lowloss import metrics as M


def test_nll_and_accuracy_hand_computed():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    y = torch.tensor([0, 2, 1])
    assert M.accuracy(p, y) == pytest.approx(1 / 3)
    assert M.nll(p, y) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.25)) / 3)
    b = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.6**2 + 0.7**2) + (0.5**2 + 0.75**2 + 0.25**2)) / 3
    assert M.brier(p, y) == pytest.approx(b)


def test_ece_hand_computed():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 1.0 (correct)
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    # bins (15 equal width): 0.9 -> bin 13, 0.6 -> bin 8, 1.0 -> bin 14 (not a hidden 16th bin)
    expected = (2 / 4) * abs(0.5 - 0.9) + (1 / 4) * abs(1 - 0.6) + (1 / 4) * abs(1 - 1.0)
    assert M.ece(p, y) == pytest.approx(expected)
    assert M.ece_bins(torch.tensor([1.0, 0.0, 1 / 15, 1 / 15 + 1e-9], dtype=torch.float64)).tolist() == [14, 0, 0, 1]


def test_ece_of_perfectly_calibrated_predictor_is_near_zero():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    y = torch.where(correct, 0, 1)
    p = torch.stack([conf, 1 - conf], 1)
    assert M.ece(p, y) < 0.01


def test_ensemble_of_two_copies_equals_the_model():
    p = torch.softmax(torch.randn(50, 4), -1)
    y = torch.randint(0, 4, (50,))
    assert M.classification_metrics(M.ensemble_probs([p, p]), y) == pytest.approx(M.classification_metrics(p, y))


def test_temperature_scaling_keeps_accuracy_and_never_increases_nll():
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(400, 5, generator=g)  # overconfident
    y = torch.randint(0, 5, (400,), generator=g)
    t = M.fit_temperature(logits, y)
    before = M.classification_metrics(torch.softmax(logits, -1), y)
    after = M.classification_metrics(torch.softmax(logits / t, -1), y)
    assert t > 1
    assert after["accuracy"] == before["accuracy"]
    assert after["nll"] <= before["nll"]
