"""Loss primitives shared by the RPN and the RoI heads, written for masked, padded batches.

Mask R-CNN section 3.1: ``L = L_cls + L_box + L_mask``, each head's terms defined beside the
head (``rpn.py``, ``roi_heads.py``). These are the elementwise pieces; callers mask padding
with ``jnp.where`` *before* summing, so padded slots add exactly zero and never a NaN.
"""

import jax.numpy as jnp


def smooth_l1(x, beta):
    """torchvision ``smooth_l1_loss`` elementwise: ``0.5 x^2 / beta`` below beta, else
    ``|x| - 0.5 beta``; ``beta = 0`` is plain L1 (detectron2's RPN)."""
    ax = jnp.abs(x)
    if beta == 0:
        return ax
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def binary_cross_entropy_with_logits(logits, targets):
    """Elementwise, numerically stable: ``max(x, 0) - x t + log(1 + exp(-|x|))``."""
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def softmax_cross_entropy(logits, labels):
    """``(..., K)`` logits and integer ``(...)`` labels -> ``(...)`` negative log-likelihood."""
    log_probs = logits - jnp.max(logits, axis=-1, keepdims=True)
    log_probs = log_probs - jnp.log(jnp.sum(jnp.exp(log_probs), axis=-1, keepdims=True))
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
