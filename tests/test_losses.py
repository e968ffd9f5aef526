"""mrcnn_jax/losses.py: smooth-L1, BCE with logits and softmax cross-entropy values."""

import numpy as np
import pytest

from mrcnn_jax.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy


def test_smooth_l1_hand_values():
    x = np.array([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0], np.float32)
    # beta 1: 0.5 x^2 inside |x| < 1, |x| - 0.5 outside
    np.testing.assert_allclose(smooth_l1(x, 1.0), [1.5, 0.125, 0.0, 0.03125, 0.5, 2.5],
                               rtol=1e-6)
    # beta 1/9: quadratic only below 1/9
    beta = 1.0 / 9
    np.testing.assert_allclose(smooth_l1(np.float32([0.1, 1.0]), beta),
                               [0.5 * 0.01 * 9, 1.0 - 0.5 / 9], rtol=1e-6)


def test_smooth_l1_beta_zero_is_l1():
    x = np.array([-2.0, -1e-3, 0.0, 0.5, 7.0], np.float32)
    np.testing.assert_array_equal(smooth_l1(x, 0.0), np.abs(x))
    np.testing.assert_array_equal(smooth_l1(x, 0), np.abs(x))


def test_smooth_l1_continuous_at_beta():
    beta = 1.0 / 9
    below, above = smooth_l1(np.float32([beta - 1e-6, beta + 1e-6]), beta)
    np.testing.assert_allclose(below, above, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 1.0 / 9, 0.5, 1.0])
def test_smooth_l1_matches_torch(beta):
    pytest.importorskip("torchvision")
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).normal(0, 1, (200,)).astype(np.float32)
    x[:5] = [0.0, beta, -beta, 1.0, -1.0]
    expected = F.smooth_l1_loss(torch.from_numpy(x), torch.zeros(200), reduction="none",
                                beta=beta).numpy()
    np.testing.assert_allclose(smooth_l1(x, beta), expected, rtol=1e-6, atol=1e-7)


def test_bce_with_logits_is_stable_at_large_logits():
    x = np.float32([100.0, -100.0, 100.0, -100.0, 0.0])
    t = np.float32([1.0, 0.0, 0.0, 1.0, 0.5])
    got = np.asarray(binary_cross_entropy_with_logits(x, t))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, [0.0, 0.0, 100.0, 100.0, np.log(2.0)], atol=1e-6)


def test_bce_with_logits_equals_naive_formula():
    rng = np.random.default_rng(1)
    x = rng.uniform(-8, 8, (500,))
    t = rng.uniform(0, 1, (500,))
    p = 1 / (1 + np.exp(-x))
    naive = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    got = binary_cross_entropy_with_logits(x.astype(np.float32), t.astype(np.float32))
    np.testing.assert_allclose(got, naive, rtol=1e-5, atol=1e-6)


def test_bce_with_logits_matches_torch():
    pytest.importorskip("torchvision")
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    x = rng.normal(0, 20, (300,)).astype(np.float32)
    t = rng.uniform(0, 1, (300,)).astype(np.float32)
    expected = F.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(t),
                                                  reduction="none").numpy()
    np.testing.assert_allclose(binary_cross_entropy_with_logits(x, t), expected, rtol=1e-5,
                               atol=1e-5)


def test_softmax_cross_entropy_hand_values():
    logits = np.float32([[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0], [1000.0, 0.0, 0.0, 0.0]])
    labels = np.int32([3, 0, 1])
    z = np.log(np.exp([2.0, 1.0, 0.0, -1.0]).sum())
    expected = [np.log(4.0), z - 2.0, 1000.0]
    got = np.asarray(softmax_cross_entropy(logits, labels))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_softmax_cross_entropy_batched_matches_torch():
    pytest.importorskip("torchvision")
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (2, 7, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 7)).astype(np.int32)
    expected = F.cross_entropy(torch.from_numpy(logits.reshape(-1, 5)),
                               torch.from_numpy(labels.reshape(-1)).long(), reduction="none")
    got = softmax_cross_entropy(logits, labels)
    assert got.shape == (2, 7)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), expected.numpy(), rtol=1e-5)
