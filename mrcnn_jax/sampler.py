"""Balanced sampler: pick a fixed-size, class-balanced subset of labelled predictions.

Faster R-CNN section 3.1.3: 256 anchors per image with up to half positives for the RPN;
Mask R-CNN section 3.1: 512 RoIs per image with 25% positives for the heads. As torchvision's
``BalancedPositiveNegativeSampler``: take ``min(#positives, n * fraction)`` positives at random,
fill the rest with random negatives. Randomness comes from an explicit key: each candidate
draws a uniform priority and the highest priorities win, so the choice is a uniform random
subset with static shapes (``lax.top_k`` with a static ``k``).

Shape shorthand: ``P`` candidates, ``S`` samples.
Taught in notebooks/06_rpn and notebooks/07_roi_heads.
"""

import jax
import jax.numpy as jnp


def _take_random(key, eligible, count, max_count):
    """Mask of ``count`` (traced, <= max_count) random entries among ``eligible`` (P,)."""
    priority = jnp.where(eligible, jax.random.uniform(key, eligible.shape), -1.0)  # (P,)
    k = min(max_count, eligible.shape[0])
    index = jax.lax.top_k(priority, k)[1]  # (k,) highest priorities first
    # pick by rank, not by a threshold on the value: float32 uniforms tie (multiples of
    # 2**-23), and a tie at the threshold would take one more than ``count``
    chosen = jnp.arange(k) < count  # (k,) count <= #eligible, so only eligible ones
    return jnp.zeros_like(eligible).at[index].set(chosen)


def sample_balanced(key, labels, num_samples, positive_fraction):
    """Choose positives and negatives for the loss.

    Args:
      key: PRNG key.
      labels: ``(P,)`` int, 1 positive, 0 negative, -1 ignored (or padding).
      num_samples: static total per image; positive_fraction: at most this share positive.
    Returns:
      ``positive (P,) bool`` and ``negative (P,) bool``, disjoint, together at most
      ``num_samples``.
    """
    pos_key, neg_key = jax.random.split(key)
    positive, negative = labels == 1, labels == 0
    max_pos = int(num_samples * positive_fraction)
    num_pos = jnp.minimum(jnp.sum(positive), max_pos)
    num_neg = jnp.minimum(jnp.sum(negative), num_samples - num_pos)
    return (_take_random(pos_key, positive, num_pos, max_pos),
            _take_random(neg_key, negative, num_neg, num_samples))


def sampled_indices(positive, negative, num_samples):
    """Indices of the sampled candidates, positives first: ``(S,) int32`` and ``(S,) valid``."""
    priority = 2 * positive.astype(jnp.int32) + negative.astype(jnp.int32)  # (P,)
    k = min(num_samples, priority.shape[0])
    top, index = jax.lax.top_k(priority, k)  # stable: lower index first among equals
    if k < num_samples:  # fewer candidates than samples: pad with invalid slots
        pad = num_samples - k
        top = jnp.concatenate([top, jnp.zeros((pad,), top.dtype)])
        index = jnp.concatenate([index, jnp.zeros((pad,), index.dtype)])
    return index.astype(jnp.int32), top > 0
