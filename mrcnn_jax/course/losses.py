"""Checks for notebooks/08_losses_and_train_step (also taught in 06 and 07): the masked,
padded losses.

- ``smooth_l1(x, beta) -> elementwise`` as ``mrcnn_jax.losses.smooth_l1`` (``beta = 0`` is L1,
  and its gradient must stay finite);
- ``rpn_losses(logits (B, A), deltas (B, A, 4), targets, beta) -> {"rpn_objectness",
  "rpn_box"}`` as ``mrcnn_jax.rpn.rpn_losses``: ``targets`` holds ``labels (B, A)`` float 1/0,
  ``deltas (B, A, 4)``, ``positive (B, A)`` and ``sampled (B, A)`` booleans; BCE over the sampled
  anchors and smooth-L1 over the positives, both divided by the number sampled (at least 1);
- ``mask_loss(mask_logits (B, R, M, M, K), labels (B, R), targets (B, R, M, M), valid (B, R))
  -> scalar`` as ``mrcnn_jax.roi_heads.mask_loss``: mean per-pixel BCE on each valid RoI's own
  class channel, averaged over valid RoIs.
"""

import jax.numpy as jnp
import numpy as np

from mrcnn_jax.course.core import (
    NONFINITE,
    call,
    call_jit,
    compare,
    compare_grad,
    describe_inputs,
    exercise,
)
from mrcnn_jax.losses import smooth_l1 as oracle_smooth_l1
from mrcnn_jax.roi_heads import mask_loss as oracle_mask_loss
from mrcnn_jax.rpn import rpn_losses as oracle_rpn_losses


@exercise("smooth_l1")
def check_smooth_l1(fn):
    """Check ``fn(x, beta) -> elementwise smooth-L1`` and its gradient, ``beta = 0``
    included."""
    def run(case, x, beta, jit=False):
        x = np.asarray(x, np.float32)
        inputs = describe_inputs((x, beta), names=("x", "beta"))
        got = call_jit(case, fn, x, beta, static_argnums=(1,)) if jit else call(case, fn, x, beta)
        compare(case, got, np.asarray(oracle_smooth_l1(x, beta)), inputs, mistakes=(
            ("below beta the loss is 0.5 * x**2 / beta (divide by beta)",
             lambda: np.where(np.abs(x) < beta, 0.5 * x * x, np.abs(x) - 0.5 * beta)),
            ("above beta the loss is |x| - 0.5 * beta, so both pieces meet at |x| = beta",
             lambda: np.where(np.abs(x) < beta, 0.5 * x * x / beta, np.abs(x))),
        ))

    run("hand example: beta 1 at x = -2, -0.5, 0, 0.5, 2", [-2, -0.5, 0, 0.5, 2], 1.0)
    rng = np.random.default_rng(10)
    x = rng.normal(0, 0.3, 12).astype(np.float32)
    run("random x, beta 1/9 (torchvision's RPN)", x, 1 / 9)
    run("random x under jax.jit, beta 1/9", x, 1 / 9, jit=True)
    run("beta = 0 is plain L1 (detectron2's RPN)", x, 0.0)
    weights = rng.normal(size=12).astype(np.float32)
    xs = np.concatenate([x[:-1], [0.0]]).astype(np.float32)
    for beta in (1 / 9, 0.0):
        compare_grad(f"gradient, beta = {beta:.3g}", lambda v, b=beta: jnp.sum(fn(v, b) * weights),
                     lambda v, b=beta: jnp.sum(oracle_smooth_l1(v, b) * weights), (xs,),
                     inputs=describe_inputs((xs, beta), names=("x", "beta")),
                     mistakes=(("With beta = 0, 0.5 * x**2 / beta divides by zero in the "
                                "branch jnp.where does not pick: handle beta == 0 (a Python "
                                "number) with a plain `if`, returning |x|.", None),))


def _rpn_inputs(rng, b=2, a=20, large=False):
    logits = rng.normal(0, 30.0 if large else 1.5, (b, a)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (b, a, 4)).astype(np.float32)
    labels = (rng.uniform(size=(b, a)) < 0.3).astype(np.float32)
    sampled = rng.uniform(size=(b, a)) < 0.6
    targets = {"labels": labels, "deltas": rng.normal(0, 0.5, (b, a, 4)).astype(np.float32),
               "positive": sampled & (labels > 0), "sampled": sampled}
    return logits, deltas, targets


def _rpn_mistakes(logits, deltas, targets, beta):
    def with_targets(**changes):
        return oracle_rpn_losses(logits, deltas, dict(targets, **changes), beta)

    def per_positive():
        out = oracle_rpn_losses(logits, deltas, targets, beta)
        count = max(targets["sampled"].sum(), 1) / max(targets["positive"].sum(), 1)
        return {"rpn_objectness": out["rpn_objectness"], "rpn_box": out["rpn_box"] * count}

    def naive_bce():  # log(sigmoid(x)) saturates to log(0) for large |x|: inf or NaN
        return NONFINITE

    return {
        "rpn_objectness": (
            ("average over the *sampled* anchors only: mask the rest with jnp.where before "
             "summing, divide by their count",
             lambda: with_targets(sampled=np.ones_like(targets["sampled"]))["rpn_objectness"]),
            ("log(sigmoid(x)) overflows for large logits: use the stable form max(x, 0) - x * t "
             "+ log1p(exp(-|x|))", naive_bce),
        ),
        "rpn_box": (
            ("the box loss counts *positive* anchors only (mask with targets['positive'])",
             lambda: with_targets(positive=targets["sampled"])["rpn_box"]),
            ("divide the box loss by the number of *sampled* anchors, not of positives",
             lambda: per_positive()["rpn_box"]),
        ),
    }


@exercise("rpn_losses")
def check_rpn_losses(fn):
    """Check ``fn(logits, deltas, targets, beta) -> {"rpn_objectness", "rpn_box"}`` and its
    gradients."""
    def run(case, logits, deltas, targets, beta, jit=False):
        inputs = describe_inputs((logits, deltas), targets, names=("logits", "deltas"))
        got = (call_jit(case, fn, logits, deltas, targets, beta, static_argnums=(3,)) if jit
               else call(case, fn, logits, deltas, targets, beta))
        if not isinstance(got, dict) or set(got) != {"rpn_objectness", "rpn_box"}:
            raise AssertionError(f"case '{case}': return a dict with keys 'rpn_objectness' and "
                                 f"'rpn_box'; got {type(got).__name__} "
                                 f"{sorted(got) if isinstance(got, dict) else ''}")
        expected = oracle_rpn_losses(logits, deltas, targets, beta)
        mistakes = _rpn_mistakes(logits, deltas, targets, beta)
        for name in ("rpn_objectness", "rpn_box"):
            compare(case, got[name], np.asarray(expected[name]), inputs, rtol=1e-4, atol=1e-5,
                    mistakes=mistakes[name], what=name)

    logits = np.array([[2.0, -1.0, 0.0, 3.0]], np.float32)
    deltas = np.array([[[0.1, 0, 0, 0], [0, 0, 0, 0], [0, 0.5, 0, 0], [1.0, 0, 0, 0]]],
                      np.float32)
    targets = {"labels": np.array([[1, 0, 0, 1]], np.float32), "deltas": np.zeros((1, 4, 4),
                                                                                   np.float32),
               "positive": np.array([[True, False, False, False]]),
               "sampled": np.array([[True, True, False, False]])}
    run("hand example: 4 anchors, 2 sampled, 1 positive, beta 1/9", logits, deltas, targets,
        1 / 9)
    rng = np.random.default_rng(11)
    args = _rpn_inputs(rng)
    run("random batch of 2 images, 20 anchors", *args, 1 / 9)
    run("random batch under jax.jit", *args, 1 / 9, jit=True)
    run("large logits (|x| up to ~100): no overflow", *_rpn_inputs(rng, large=True), 1 / 9)
    empty = dict(args[2], sampled=np.zeros_like(args[2]["sampled"]),
                 positive=np.zeros_like(args[2]["positive"]))
    run("nothing sampled (an image batch without anchors to learn from): 0, not NaN",
        args[0], args[1], empty, 1 / 9)
    for index, name in ((0, "logits"), (1, "deltas")):
        compare_grad(f"gradient with respect to the {name} (zero on unsampled anchors)",
                     lambda *v, n=index: sum(fn(v[0], v[1], args[2], 1 / 9).values()),
                     lambda *v: sum(oracle_rpn_losses(v[0], v[1], args[2], 1 / 9).values()),
                     args[:2], argnums=index)


@exercise("mask_loss")
def check_mask_loss(fn):
    """Check ``fn(mask_logits (B, R, M, M, K), labels (B, R), targets (B, R, M, M),
    valid (B, R)) -> scalar`` and its gradient."""
    def run(case, logits, labels, targets, valid, jit=False):
        args = (np.asarray(logits, np.float32), np.asarray(labels, np.int32),
                np.asarray(targets, np.float32), np.asarray(valid, bool))
        inputs = describe_inputs(args, names=("mask_logits", "labels", "targets", "valid"))
        got = call_jit(case, fn, *args) if jit else call(case, fn, *args)
        lg, lb, tg, vd = args
        compare(case, got, np.asarray(oracle_mask_loss(*args)), inputs, rtol=1e-4, atol=1e-5,
                mistakes=(
                    ("use each RoI's own class channel: mask_logits[..., labels]",
                     lambda: oracle_mask_loss(lg, np.zeros_like(lb), tg, vd)),
                    ("average over valid RoIs only (mask the padding, divide by their count)",
                     lambda: oracle_mask_loss(lg, lb, tg, np.ones_like(vd))),
                ))

    logits = np.zeros((1, 2, 2, 2, 3), np.float32)
    logits[0, 0, :, :, 2] = [[4.0, -4.0], [0.0, 2.0]]
    targets = np.array([[[[1, 0], [1, 1]], [[0, 0], [0, 0]]]], np.float32)
    run("hand example: one valid RoI of class 2, one padded", logits, [[2, 0]], targets,
        [[True, False]])
    rng = np.random.default_rng(12)
    logits = rng.normal(0, 2, (2, 5, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(1, 3, (2, 5))
    targets = rng.uniform(size=(2, 5, 4, 4)).astype(np.float32)
    valid = rng.uniform(size=(2, 5)) < 0.6
    run("random logits and soft targets, 2 images, 5 RoIs, 3 classes", logits, labels, targets,
        valid)
    run("the same under jax.jit", logits, labels, targets, valid, jit=True)
    run("no valid RoI (no positives in the batch): 0, not NaN", logits, labels, targets,
        np.zeros_like(valid))
    run("large logits: no overflow", logits * 50, labels, targets, valid)
    labels, valid = labels.astype(np.int32), valid.astype(bool)
    compare_grad("gradient with respect to the mask logits",
                 lambda v: fn(v, labels, targets, valid),
                 lambda v: oracle_mask_loss(v, labels, targets, valid), (logits,))
