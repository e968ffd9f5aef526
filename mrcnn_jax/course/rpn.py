"""Checks for notebooks/06_rpn: anchor labels by IoU matching, and the balanced sampler.

``match`` takes the signature of ``mrcnn_jax.matcher.match``::

    match(iou (G, P), gt_valid (G,), high, low, allow_low_quality) -> (P,) int

a ground-truth index where ``best IoU >= high``, ``-1`` (background) where ``best IoU < low``,
``-2`` (ignored) in between; with ``allow_low_quality``, every prediction whose IoU with some
valid ground truth equals that ground truth's best IoU keeps its best match (all ties); padded
ground truth (``gt_valid`` False) never matches.

``sample_balanced`` takes the signature of ``mrcnn_jax.sampler.sample_balanced``::

    sample_balanced(key, labels (P,), num_samples, positive_fraction)
        -> positive (P,) bool, negative (P,) bool

Random choices cannot equal the oracle's, so this check tests the properties instead: subsets
of the right labels, disjoint, exact counts, the same key gives the same choice, other keys give
other choices, every candidate can be picked, static shapes under ``jit``.
"""

import jax
import numpy as np

from mrcnn_jax.course.core import call, call_jit, compare, describe_inputs, exercise, require
from mrcnn_jax.matcher import match as oracle_match


def _numpy_match(iou, valid, high, low, allow, mask_padding=True, low_quality="all",
                 high_inclusive=True):
    """Reference with switches that model the common mistakes."""
    iou = np.where(valid[:, None], iou, -1.0) if mask_padding else iou
    best, best_gt = iou.max(axis=0), iou.argmax(axis=0)
    foreground = best >= high if high_inclusive else best > high
    matches = np.where(best < low, -1, np.where(foreground, best_gt, -2))
    if allow:
        is_best = np.zeros(iou.shape[1], bool)
        if low_quality == "all":
            is_best = np.any((iou == iou.max(axis=1, keepdims=True)) & valid[:, None], axis=0)
        else:  # only the first best prediction of each ground truth
            is_best[iou.argmax(axis=1)[valid]] = True
        matches = np.where(is_best, best_gt, matches)
    return matches.astype(np.int32)


def _match_mistakes(iou, valid, high, low, allow):
    return (
        ("padded ground truth (gt_valid False) must never match: set its IoU to -1 first",
         lambda: _numpy_match(iou, valid, high, low, allow, mask_padding=False)),
        ("foreground is IoU >= high (not > high)",
         lambda: _numpy_match(iou, valid, high, low, allow, high_inclusive=False)),
        ("the low-quality rule is missing: each ground truth's best predictions are "
         "foreground even below `high`", lambda: _numpy_match(iou, valid, high, low, False)),
        ("low-quality rule: *every* prediction tied at a ground truth's best IoU is kept, not "
         "only the first (argmax)",
         lambda: _numpy_match(iou, valid, high, low, allow, low_quality="first")),
        ("apply the low-quality rule only when allow_low_quality is True (the RoI heads "
         "match without it)", lambda: _numpy_match(iou, valid, high, low, True)),
        ("ignored is -2 and background -1: IoU in [low, high) is ignored",
         lambda: np.where(_numpy_match(iou, valid, high, low, allow) == -2, -1,
                          _numpy_match(iou, valid, high, low, allow))),
    )


@exercise("match")
def check_match(fn):
    """Check ``fn(iou (G, P), gt_valid (G,), high, low, allow_low_quality) -> (P,) int``."""
    def run(case, iou, valid, high=0.7, low=0.3, allow=True, jit=False):
        iou, valid = np.asarray(iou, np.float32), np.asarray(valid, bool)
        inputs = describe_inputs((iou, valid, high, low, allow),
                                 names=("iou", "gt_valid", "high", "low", "allow_low_quality"))
        if jit:
            got = call_jit(case, fn, iou, valid, high, low, allow, static_argnums=(2, 3, 4))
        else:
            got = call(case, fn, iou, valid, high, low, allow)
        compare(case, got, np.asarray(oracle_match(iou, valid, high, low, allow)), inputs,
                mistakes=_match_mistakes(iou, valid, high, low, allow))

    hand = [[0.8, 0.5, 0.1, 0.0, 0.2],
            [0.1, 0.6, 0.0, 0.35, 0.25]]
    run("hand example: 2 ground truths, 5 anchors, thresholds 0.7 / 0.3, no low-quality "
        "rule", hand, [True, True], allow=False)
    run("the same with the low-quality rule (the second ground truth's best anchor is "
        "foreground)", hand, [True, True])
    rng = np.random.default_rng(7)
    iou = rng.uniform(0, 1, (4, 12)).astype(np.float32) ** 2
    run("random IoU, 4 ground truths (one padded), 12 anchors", iou, [True, True, False, True])
    run("random IoU under jax.jit", iou, [True, False, True, True], jit=True)
    run("IoU exactly at the thresholds: 0.7 is foreground, 0.3 ignored",
        [[0.7, 0.3, 0.29, 0.95]], [True])
    run("ties: two anchors share a ground truth's best IoU 0.4; both are kept",
        [[0.4, 0.1, 0.4, 0.2]], [True])
    run("padded ground truth with a large IoU never matches",
        [[0.1, 0.2, 0.5], [0.9, 0.95, 0.0]], [True, False])
    run("no ground truth (all padded): every anchor is background",
        [[0.9, 0.5, 0.0], [0.0, 0.8, 0.75]], [False, False])


def _run_sampler(case, fn, key, labels, n, frac, jit=False):
    if jit:
        got = call_jit(case, fn, key, labels, n, frac, static_argnums=(2, 3))
    else:
        got = call(case, fn, key, labels, n, frac)
    require(isinstance(got, (tuple, list)) and len(got) == 2, case,
            f"return (positive, negative), two boolean (P,) arrays; got {type(got).__name__}")
    pos, neg = (np.asarray(g) for g in got)
    for name, mask in (("positive", pos), ("negative", neg)):
        require(mask.shape == labels.shape and mask.dtype == bool, case,
                f"{name} must be a boolean mask of shape {labels.shape} (static shape); got "
                f"shape {mask.shape} dtype {mask.dtype}")
    return pos, neg


def _check_sample(case, fn, key, labels, n, frac, jit=False):
    labels = np.asarray(labels, np.int32)
    inputs = describe_inputs((labels, n, frac),
                             names=("labels", "num_samples", "positive_fraction"))
    pos, neg = _run_sampler(case, fn, key, labels, n, frac, jit)
    want_pos = min(int(np.sum(labels == 1)), int(n * frac))
    want_neg = min(int(np.sum(labels == 0)), n - want_pos)
    require(not np.any(pos & (labels != 1)), case,
            f"positive holds a candidate whose label is not 1 (index "
            f"{int(np.argmax(pos & (labels != 1)))}); inputs: {inputs}")
    require(not np.any(neg & (labels == -1)), case,
            "negative holds an ignored candidate (label -1): ignored anchors are never "
            f"sampled; inputs: {inputs}")
    require(not np.any(neg & (labels != 0)), case,
            f"negative holds a candidate whose label is not 0; inputs: {inputs}")
    require(int(pos.sum()) == want_pos, case,
            f"expected {want_pos} positives = min(#label 1, int(num_samples * "
            f"positive_fraction)), got {int(pos.sum())}; inputs: {inputs}")
    require(int(neg.sum()) == want_neg, case,
            f"expected {want_neg} negatives = min(#label 0, num_samples - positives taken): "
            f"negatives fill the rest; got {int(neg.sum())}; inputs: {inputs}")
    return pos, neg


@exercise("sample_balanced")
def check_sample_balanced(fn):
    """Check ``fn(key, labels (P,), num_samples, positive_fraction) -> (positive, negative)``
    (module docstring)."""
    key = jax.random.key(0)
    _check_sample("hand example: 3 positives, 4 negatives, 1 ignored; 4 samples at half "
                  "positives", fn, key, [1, 0, 0, 1, -1, 0, 1, 0], 4, 0.5)
    _check_sample("few positives: negatives fill the rest", fn, key,
                  [0, 0, 1, 0, 0, 0, 0, 0, -1, 0], 6, 0.5)
    _check_sample("few candidates: fewer than num_samples in all", fn, key, [1, 0, -1, -1], 8,
                  0.25)
    _check_sample("no positives at all (no ground truth)", fn, key, [0, 0, 0, -1, 0], 4, 0.5)
    rng = np.random.default_rng(8)
    labels = rng.choice([-1, 0, 1], size=40, p=[0.2, 0.5, 0.3]).astype(np.int32)
    _check_sample("random labels under jax.jit, 16 samples at 25% positives", fn, key, labels,
                  16, 0.25, jit=True)
    case = "the key decides: the same key gives the same sample"
    first = _run_sampler(case, fn, jax.random.key(3), labels, 16, 0.25, jit=True)
    again = _run_sampler(case, fn, jax.random.key(3), labels, 16, 0.25, jit=True)
    require(all(np.array_equal(a, b) for a, b in zip(first, again, strict=True)), case,
            "two calls with the same key chose differently: use only the key passed in "
            "(no global seed, no numpy random)")
    case = "many keys: every positive can be picked, each about equally often"
    labels = np.array([1] * 10 + [0] * 10, np.int32)
    counts = np.zeros(20)
    for seed in range(40):
        pos, neg = _run_sampler(case, fn, jax.random.key(seed), labels, 4, 0.5, jit=True)
        counts += pos + neg
    require(counts[:10].std() > 0 and counts[:10].min() > 0, case,
            f"over 40 keys the 2 positives of 10 were always the same (picks per candidate "
            f"{counts[:10].astype(int).tolist()}): draw them at random with the key "
            f"(e.g. jax.random.uniform priorities and lax.top_k), not the first ones")
    require(counts[:10].max() <= 24 and counts[10:].max() <= 24, case,
            f"over 40 keys some candidates were picked far more often than 8 times "
            f"(picks per candidate {counts.astype(int).tolist()}): the choice is not uniform")
