"""Plotting helpers shared by the notebooks and command-line tools: one palette, one look.

Everything takes numpy-convertible arrays in the package conventions (images HWC, boxes xyxy in
pixels) and draws on a matplotlib ``Axes``; nothing here is needed for training or inference,
and matplotlib is imported lazily so the package imports without it.

Shape shorthand: ``D`` boxes or masks, ``H, W`` image size.
"""

import numpy as np

# Ten colours that stay distinguishable on photos and on the shapes data (Tableau 10).
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)


def colour(i):
    """The palette colour of index ``i`` (wraps around)."""
    return PALETTE[int(i) % len(PALETTE)]


def _rgb(i):
    hexcode = colour(i).lstrip("#")
    return np.array([int(hexcode[k : k + 2], 16) for k in (0, 2, 4)], np.float32) / 255.0


def subplots(ncols=1, nrows=1, size=4.0, **kwargs):
    """``plt.subplots`` with square panels of ``size`` inches; returns (figure, flat axes)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), **kwargs)
    return fig, np.atleast_1d(axes).ravel()


def show_image(ax, image, title=None):
    """Show an ``(H, W, 3)`` uint8 or [0, 1] float image (or ``(H, W)`` map) without ticks."""
    image = np.asarray(image)
    ax.imshow(image, cmap="viridis" if image.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def draw_boxes(ax, boxes, labels=None, scores=None, class_names=None, colours=None,
               linestyle="-", linewidth=1.5, valid=None):
    """Draw xyxy ``boxes (D, 4)`` with optional captions ``name score``.

    Args:
      labels: ``(D,)`` ints, used for colour and caption; scores: ``(D,)`` floats.
      class_names: list mapping label to name; colours: one colour per box (overrides labels).
      valid: ``(D,)`` bool, padded entries are skipped.
    """
    import matplotlib.patches as patches

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = np.ones(len(boxes), bool) if valid is None else np.asarray(valid, bool)
    for i in np.flatnonzero(keep):
        x1, y1, x2, y2 = boxes[i]
        key = labels[i] if labels is not None else i
        c = colours[i] if colours is not None else colour(key)
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                                       linewidth=linewidth, linestyle=linestyle))
        caption = []
        if labels is not None:
            caption.append(class_names[int(labels[i])] if class_names else str(int(labels[i])))
        if scores is not None:
            caption.append(f"{float(scores[i]):.2f}")
        if caption:
            ax.text(x1, y1, " ".join(caption), fontsize=7, color="white", va="bottom",
                    bbox=dict(facecolor=c, edgecolor="none", pad=1, alpha=0.8))
    return ax


def overlay_masks(image, masks, labels=None, alpha=0.5, threshold=0.5, valid=None):
    """Blend ``masks (D, H, W)`` (probabilities or bools) onto ``image``; returns float RGB.

    Each mask is thresholded at ``threshold`` and painted in its palette colour (by label if
    given, else by index).
    """
    image = np.asarray(image, np.float32)
    if image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    out = image.copy()
    masks = np.asarray(masks)
    keep = np.ones(len(masks), bool) if valid is None else np.asarray(valid, bool)
    for i in np.flatnonzero(keep):
        on = masks[i] >= threshold
        c = _rgb(labels[i] if labels is not None else i)
        out[on] = (1.0 - alpha) * out[on] + alpha * c
    return out


def draw_points(ax, xy, colour_index=0, size=6, marker="o", label=None):
    """Scatter ``(P, 2)`` points given as (x, y) pixels in a palette colour."""
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colour(colour_index), marker=marker, label=label)
    return ax


def draw_grid(ax, height, width, cell=1.0, origin=-0.5, colour_name="#cccccc", linewidth=0.5):
    """Draw the cell edges of a ``height x width`` map whose cells are ``cell`` units wide.

    ``origin=-0.5`` matches ``imshow`` of the map itself (cell centres at integers); use
    ``origin=0`` and ``cell=stride`` to draw a feature grid over the input image.
    """
    for k in range(height + 1):
        ax.axhline(origin + k * cell, color=colour_name, linewidth=linewidth)
    for k in range(width + 1):
        ax.axvline(origin + k * cell, color=colour_name, linewidth=linewidth)
    return ax
