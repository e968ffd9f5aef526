"""Non-maximum suppression with a fixed output size, so it runs under ``jit`` on any device.

Greedy NMS (Faster R-CNN section 3.3, Mask R-CNN section 3.1 "Inference"): visit boxes in
descending score; keep a box unless a kept box overlaps it with IoU strictly above the
threshold. torchvision's ``ops.nms`` returns a list whose length depends on the data; XLA needs
static shapes, so here the result is always ``max_output_size`` long, with a ``valid`` mask and
index 0 in the padded slots (safe to gather with, meaningless without ``valid``).

The loop runs once per *kept* box (at most ``max_output_size`` times, stopping early when no
candidate is left) and compares that box with all ``N`` boxes in one vector operation, so the
work is ``O(kept * N)`` and no ``(N, N)`` IoU matrix is stored.

That loop is serial: on a GPU or TPU each iteration is a kernel launch or a loop trip whose
vector work is tiny. :func:`nms_tiled` (the tiled scheme of tensorflow/tpu's padded NMS) keeps
exactly the same boxes with far fewer iterations: the boxes, sorted by score, are cut into
tiles of ``T``; each tile is first suppressed by every box kept in earlier tiles (one
``(N, T)`` IoU block), then suppresses itself by iterating ``keep_k = alive_k and no kept j < k
of the tile overlaps k`` to its fixed point, which is the greedy answer because ``keep_k``
depends only on boxes before ``k``. Iterations: ``N / T`` tiles, each about the length of the
longest suppression chain inside a tile (usually a few). ``algorithm="auto"`` in :func:`nms`
and :func:`batched_nms` picks greedy on CPU (one fast loop trip per kept box, no ``T x T``
work) and tiled on GPU/TPU; ``benchmarks/bench_nms.py`` measures both.

Shape shorthand: ``N`` candidate boxes, ``K = max_output_size``, ``T`` tile size.
Naming: ``valid`` marks real entries of a padded array.
Taught in notebooks/03_nms.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.boxes import box_iou


def _check_inputs(boxes, scores, max_output_size, valid):
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4); got {boxes.shape} ({boxes.dtype})")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores must have shape (N,) = {boxes.shape[:1]} to match boxes; got {scores.shape}"
        )
    if isinstance(max_output_size, bool) or not isinstance(max_output_size, int) or (
        max_output_size <= 0
    ):
        raise ValueError(
            f"max_output_size must be a positive Python int (a static shape); got "
            f"{max_output_size!r}"
        )
    if valid is not None and jnp.shape(valid) != scores.shape:
        raise ValueError(
            f"valid must have shape (N,) = {scores.shape} to match boxes; got {jnp.shape(valid)}"
        )


def _greedy_nms(boxes, scores, groups, candidate, iou_threshold, max_output_size):
    """Shared loop: ``groups`` (N,) int; boxes only suppress boxes of the same group."""
    order = jnp.argsort(-scores, stable=True)  # (N,) descending score, ties by index
    boxes, groups = boxes[order], groups[order]  # (N, 4), (N,)
    alive = candidate[order]  # (N,) not yet kept nor suppressed
    keep = jnp.zeros((max_output_size,), jnp.int32)  # (K,)

    def cond(state):
        count, alive, _ = state
        return (count < max_output_size) & jnp.any(alive)

    def body(state):
        count, alive, keep = state
        best = jnp.argmax(alive)  # first alive box in score order = highest score
        iou = box_iou(boxes[best][None], boxes)[0]  # (N,)
        suppress = (iou > iou_threshold) & (groups == groups[best])
        alive = alive & ~suppress
        alive = alive.at[best].set(False)
        keep = keep.at[count].set(order[best].astype(jnp.int32))
        return count + 1, alive, keep

    count, _, keep = jax.lax.while_loop(cond, body, (jnp.int32(0), alive, keep))
    valid = jnp.arange(max_output_size) < count  # (K,)
    return jnp.where(valid, keep, 0), valid


def _tile_fixed_point(alive, suppresses):
    """Greedy NMS inside one tile: ``alive (T,)`` and strictly upper-triangular
    ``suppresses (T, T)`` -> kept ``(T,)`` and the number of iterations it took."""

    def cond(state):
        return state[1]

    def body(state):
        kept, _, count = state
        new = alive & ~jnp.any(kept[:, None] & suppresses, axis=0)  # (T,)
        return new, jnp.any(new != kept), count + 1

    kept, _, count = jax.lax.while_loop(cond, body, (alive, jnp.bool_(True), jnp.int32(0)))
    return kept, count


def _tiled_nms(boxes, scores, groups, candidate, iou_threshold, max_output_size, tile_size):
    """Tiled NMS; returns ``indices (K,)``, ``valid (K,)`` and the total loop iterations."""
    n = boxes.shape[0]
    t = min(tile_size, n)
    tiles = -(-n // t)
    order = jnp.argsort(-scores, stable=True)  # (N,) descending score, ties by index
    pad = tiles * t - n
    boxes = jnp.pad(boxes[order], ((0, pad), (0, 0)))  # (tiles*T, 4) sorted, zero padding
    groups = jnp.pad(groups[order], (0, pad), constant_values=-1)
    alive = jnp.pad(candidate[order], (0, pad))  # padding is never a candidate
    later = jnp.triu(jnp.ones((t, t), bool), k=1)  # [j, k]: j comes before k

    def cond(state):
        i, _, count, _ = state
        return (i < tiles) & (count < max_output_size)

    def body(state):
        i, kept, count, iterations = state
        tile = jax.lax.dynamic_slice_in_dim(boxes, i * t, t)  # (T, 4)
        tile_groups = jax.lax.dynamic_slice_in_dim(groups, i * t, t)  # (T,)
        same = groups[:, None] == tile_groups[None, :]  # (tiles*T, T)
        hit = (box_iou(boxes, tile) > iou_threshold) & same & kept[:, None]
        tile_alive = jax.lax.dynamic_slice_in_dim(alive, i * t, t) & ~jnp.any(hit, axis=0)
        inside = (box_iou(tile, tile) > iou_threshold) & later  # (T, T) j before k
        inside = inside & (tile_groups[:, None] == tile_groups[None, :])
        tile_kept, inner = _tile_fixed_point(tile_alive, inside)
        kept = jax.lax.dynamic_update_slice_in_dim(kept, tile_kept, i * t, 0)
        return i + 1, kept, count + jnp.sum(tile_kept), iterations + inner + 1

    start = (jnp.int32(0), jnp.zeros((tiles * t,), bool), jnp.int32(0), jnp.int32(0))
    _, kept, count, iterations = jax.lax.while_loop(cond, body, start)
    position = jnp.nonzero(kept, size=max_output_size, fill_value=0)[0]  # (K,) sorted order
    valid = jnp.arange(max_output_size) < jnp.minimum(count, max_output_size)
    indices = jnp.where(valid, order[jnp.minimum(position, n - 1)], 0).astype(jnp.int32)
    return indices, valid, iterations


def _use_tiled(algorithm):
    if algorithm not in ("auto", "greedy", "tiled"):
        raise ValueError(f"algorithm must be 'auto', 'greedy' or 'tiled'; got {algorithm!r}")
    return algorithm == "tiled" or (algorithm == "auto" and jax.default_backend() != "cpu")


def nms_tiled(boxes, scores, iou_threshold, max_output_size, valid=None, tile_size=256,
              classes=None, return_iterations=False):
    """Tiled NMS: the same kept boxes as :func:`nms` (or :func:`batched_nms` with
    ``classes``), in far fewer loop iterations (module docstring).

    Args:
      boxes, scores, iou_threshold, max_output_size, valid: as in :func:`nms`.
      tile_size: static ``T``, boxes suppressed together (clipped to ``N``).
      classes: optional ``(N,)`` int groups; boxes suppress only their own group.
      return_iterations: also return the number of loop iterations (benchmarks).
    Returns:
      ``indices (K,) int32`` and ``valid (K,) bool`` (and the iteration count).
    """
    boxes, scores = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32)
    _check_inputs(boxes, scores, max_output_size, valid)
    if isinstance(tile_size, bool) or not isinstance(tile_size, int | np.integer) or (
        tile_size <= 0
    ):
        raise ValueError(f"tile_size must be a positive Python int; got {tile_size!r}")
    candidate = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    groups = jnp.zeros(scores.shape, jnp.int32) if classes is None else (
        _check_classes(classes, scores).astype(jnp.int32))
    indices, keep, iterations = _tiled_nms(boxes, scores, groups, candidate, iou_threshold,
                                           max_output_size, int(tile_size))
    return (indices, keep, iterations) if return_iterations else (indices, keep)


def _check_classes(classes, scores):
    classes = jnp.asarray(classes)
    if classes.shape != scores.shape or not jnp.issubdtype(classes.dtype, jnp.integer):
        raise ValueError(
            f"classes must be integers of shape (N,) = {scores.shape}; got {classes.shape} "
            f"({classes.dtype})"
        )
    return classes


def nms(boxes, scores, iou_threshold, max_output_size, valid=None, algorithm="greedy"):
    """Greedy NMS with a fixed-size result.

    Args:
      boxes: ``(N, 4)`` xyxy boxes.
      scores: ``(N,)`` scores; higher first (ties: lower index first).
      iou_threshold: a box is suppressed when its IoU with a kept box is ``> iou_threshold``.
      max_output_size: static int ``K``, the length of the result.
      valid: optional ``(N,)`` bool; boxes marked False are never kept (padding).
      algorithm: ``"greedy"`` (one loop trip per kept box), ``"tiled"`` (:func:`nms_tiled`,
        the same result) or ``"auto"`` (greedy on CPU, tiled on GPU/TPU).
    Returns:
      ``indices (K,) int32`` into ``boxes`` in descending score order, 0 where padded, and
      ``valid (K,) bool``. The valid indices equal ``torchvision.ops.nms(...)[:K]``.

    Taught in notebooks/03_nms.
    """
    if _use_tiled(algorithm):
        return nms_tiled(boxes, scores, iou_threshold, max_output_size, valid)
    boxes, scores = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32)
    _check_inputs(boxes, scores, max_output_size, valid)
    candidate = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    groups = jnp.zeros(scores.shape, jnp.int32)
    return _greedy_nms(boxes, scores, groups, candidate, iou_threshold, max_output_size)


def batched_nms(boxes, scores, classes, iou_threshold, max_output_size, valid=None,
                algorithm="greedy"):
    """Per-class NMS: boxes suppress only boxes of the same class (``torchvision batched_nms``).

    Args:
      boxes: ``(N, 4)``; scores: ``(N,)``; classes: ``(N,)`` integer class or group ids.
      iou_threshold, max_output_size, valid, algorithm: as in :func:`nms`.
    Returns:
      ``indices (K,)`` and ``valid (K,)`` in descending score order over all classes.
    """
    if _use_tiled(algorithm):
        return nms_tiled(boxes, scores, iou_threshold, max_output_size, valid, classes=classes)
    boxes, scores = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32)
    _check_inputs(boxes, scores, max_output_size, valid)
    classes = _check_classes(classes, scores)
    candidate = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return _greedy_nms(
        boxes, scores, classes.astype(jnp.int32), candidate, iou_threshold, max_output_size
    )


def class_grid_nms(boxes, scores, iou_threshold, max_output_size, valid=None, flat_index=None,
                   algorithm="greedy"):
    """:func:`batched_nms` for the box head's grid of (proposal, class) candidates.

    The same kept boxes as ``batched_nms(boxes.reshape(-1, 4), scores.reshape(-1),
    classes=column index, ...)``, found without sorting and with per-iteration work of one
    class column instead of all ``P * C`` candidates. Boxes only suppress boxes of their own
    class, so the loop keeps, for every class, its best live candidate (``(C,)`` scores and
    rows); each iteration takes the best of those (ties: the lowest flat index ``p * C + c``,
    as the stable sort of :func:`batched_nms` orders them), suppresses inside that class
    column only and finds the column's new best. On R50-FPN at 800x1088 (1,000 proposals x
    90 classes) the flat loop sorted 90,000 scores and passed over all of them at every one of
    its 100 iterations (benchmarks/README.md, issue 19).

    The RPN's proposals are such a grid too (rows: the top-n of each level; columns: levels,
    padded with invalid entries to the longest level), numbered level after level:
    ``flat_index`` gives each entry's index in that flat order, for ties and the result.

    ``algorithm="tiled"`` (or ``"auto"`` off the CPU) flattens the grid in ``flat_index`` order
    and runs :func:`nms_tiled` over it: the same result in fewer loop trips on an accelerator.

    Args:
      boxes: ``(P, C, 4)`` xyxy; scores: ``(P, C)``; valid: optional ``(P, C)`` bool.
      iou_threshold, max_output_size: as in :func:`nms`.
      flat_index: optional ``(P, C)`` int, distinct over the valid entries and increasing
        down each column; default ``p * C + c``.
      algorithm: ``"greedy"``, ``"tiled"`` or ``"auto"``, as in :func:`nms`.
    Returns:
      ``indices (K,) int32`` (``flat_index`` of the kept entries) in descending score order,
      0 where padded, and ``valid (K,) bool``.
    """
    boxes, scores = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.shape != boxes.shape[:2]:
        raise ValueError(f"boxes must be (P, C, 4) and scores (P, C) to match; got "
                         f"{boxes.shape} and {scores.shape}")
    _check_inputs(boxes.reshape(-1, 4), scores.reshape(-1), max_output_size,
                  None if valid is None else jnp.reshape(valid, -1))
    p, c = scores.shape
    candidate = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    if flat_index is None:
        flat_index = jnp.arange(p * c, dtype=jnp.int32).reshape(p, c)
    if jnp.shape(flat_index) != (p, c):
        raise ValueError(f"flat_index must be (P, C) = {(p, c)}; got {jnp.shape(flat_index)}")
    if _use_tiled(algorithm):
        return _class_grid_tiled(boxes, scores, candidate, flat_index, iou_threshold,
                                 max_output_size)
    index = jnp.asarray(flat_index, jnp.int32).T  # (C, P)
    columns = jnp.swapaxes(boxes, 0, 1)  # (C, P, 4)
    live = jnp.where(candidate, scores, -jnp.inf).T  # (C, P); -inf: kept, suppressed or never
    column_best = jnp.argmax(live, axis=1).astype(jnp.int32)  # (C,) lowest p among ties
    column_score = jnp.max(live, axis=1)  # (C,)
    no_index = jnp.iinfo(jnp.int32).max

    def cond(state):
        count, _, _, column_score, _ = state
        return (count < max_output_size) & (jnp.max(column_score) > -jnp.inf)

    def body(state):
        count, live, column_best, column_score, keep = state
        top = jnp.max(column_score)
        at_top = jnp.take_along_axis(index, column_best[:, None], axis=1)[:, 0]  # (C,)
        cls = jnp.argmin(jnp.where(column_score == top, at_top, no_index))
        best = column_best[cls]
        column = columns[cls]  # (P, 4)
        iou = box_iou(column[best][None], column)[0]  # (P,)
        row = jnp.where(iou > iou_threshold, -jnp.inf, live[cls]).at[best].set(-jnp.inf)
        live = live.at[cls].set(row)
        column_best = column_best.at[cls].set(jnp.argmax(row).astype(jnp.int32))
        column_score = column_score.at[cls].set(jnp.max(row))
        keep = keep.at[count].set(index[cls, best])
        return count + 1, live, column_best, column_score, keep

    start = (jnp.int32(0), live, column_best, column_score,
             jnp.zeros((max_output_size,), jnp.int32))
    count, _, _, _, keep = jax.lax.while_loop(cond, body, start)
    valid_out = jnp.arange(max_output_size) < count  # (K,)
    return jnp.where(valid_out, keep, 0), valid_out


def _class_grid_tiled(boxes, scores, candidate, flat_index, iou_threshold, max_output_size):
    """:func:`class_grid_nms` by :func:`nms_tiled` over the grid flattened in ``flat_index``
    order (so ties fall as in the greedy loop), the class ids being the column numbers."""
    p, c = scores.shape
    flat_index = jnp.asarray(flat_index, jnp.int32).reshape(-1)  # (P*C,)
    order = jnp.argsort(flat_index, stable=True)  # (P*C,)
    classes = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (p, c)).reshape(-1)[order]
    indices, valid = nms_tiled(boxes.reshape(-1, 4)[order], scores.reshape(-1)[order],
                               iou_threshold, max_output_size,
                               valid=candidate.reshape(-1)[order], classes=classes)
    return jnp.where(valid, flat_index[order][indices], 0), valid
