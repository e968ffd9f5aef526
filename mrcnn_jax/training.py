"""Losses of the whole model and the jitted training step.

Mask R-CNN section 3.1: ``L = L_cls + L_box + L_mask`` for the heads, plus the RPN's objectness
and box terms (trained jointly, torchvision's "approximate joint training": no gradient flows
through the proposal boxes). Each term is reported separately.

``train_step`` is one jitted call (``xla_cpu.jit``: ``nnx.jit``'s job, with the package's XLA:CPU
options): forward, losses, gradients, optimizer update; it retraces only when the batch's shapes
or dtypes change. Randomness is explicit: pass
``jax.random.fold_in(base_key, step)``.

Shape shorthand and batch keys: see ``model.py``.
Taught in notebooks/08_losses_and_train_step.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mrcnn_jax import xla_cpu
from mrcnn_jax.roi_heads import box_losses, mask_loss
from mrcnn_jax.rpn import rpn_losses
from mrcnn_jax.schedule import scale_by_warmup_cosine

LOSS_TERMS = ("rpn_objectness", "rpn_box", "box_classifier", "box_regression", "mask")
BATCH_KEYS = ("images", "boxes", "labels", "masks", "valid")


def compute_losses(outputs, config):
    """Every loss term from :meth:`MaskRCNN.train_forward` outputs (unweighted), and their
    weighted sum ``loss`` (``roi_heads.mask_loss_weight`` on the mask term, 1 elsewhere)."""
    terms = rpn_losses(outputs["rpn_logits"], outputs["rpn_deltas"], outputs["rpn_targets"],
                       config.rpn.smooth_l1_beta)
    terms.update(box_losses(outputs["class_logits"], outputs["box_deltas"], outputs["samples"],
                            config.roi_heads.smooth_l1_beta))
    terms["mask"] = mask_loss(outputs["mask_logits"], outputs["mask_labels"],
                              outputs["mask_targets"], outputs["mask_valid"])
    weights = {"mask": config.roi_heads.mask_loss_weight}  # every other term weighs 1
    terms["loss"] = sum(weights.get(name, 1.0) * terms[name] for name in LOSS_TERMS)
    return terms


def loss_fn(model, batch, key):
    """Total loss and the terms: ``(scalar, dict)``; usable for validation as it is."""
    terms = compute_losses(model.train_forward(batch, key), model.config)
    return terms["loss"], terms


def check_batch(batch):
    """Raise a clear error if a batch misses a key the model needs."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; it needs {list(BATCH_KEYS)} "
                       f"(got {sorted(batch)})")
    return {k: batch[k] for k in BATCH_KEYS}


def make_optimizer(model, learning_rate=0.02, momentum=0.9, weight_decay=1e-4,
                   warmup_steps=100, total_steps=None, clip_norm=10.0):
    """SGD with momentum and weight decay (the paper's recipe), linear warm-up, cosine decay.

    The chain is ``clip_by_global_norm -> add_decayed_weights -> trace(momentum)`` (optax's SGD
    momentum) ``-> scale_by_warmup_cosine`` (``schedule.py``): the learning rate rises from
    ``0.001 * learning_rate`` over ``warmup_steps``, then falls along half a cosine to 0 at
    ``total_steps`` (None: it stays at ``learning_rate``). The length lives in the optimizer
    state, so ``schedule.set_total_steps`` can fit it to a time budget without recompiling.
    Only ``nnx.Param`` variables are optimised; frozen weights are never touched.

    The transformation is built once per set of hyperparameters and reused: ``nnx.jit`` keys
    its cache on it, so a second optimizer with the same settings (a resumed run in the same
    process, a notebook's second run) reuses the compiled step instead of compiling it again.
    """
    tx = _transformation(float(learning_rate), float(momentum), float(weight_decay),
                         int(warmup_steps), None if total_steps is None else int(total_steps),
                         float(clip_norm))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@functools.lru_cache(maxsize=64)
def _transformation(learning_rate, momentum, weight_decay, warmup_steps, total_steps,
                    clip_norm):
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        scale_by_warmup_cosine(learning_rate, warmup_steps, total_steps),
    )


def apply_step(model, optimizer, batch, key, with_grads=False):
    """Forward, backward and update, not jitted: the body of :func:`train_step` and of the
    data-parallel step in ``sharding.py``. Returns the loss terms, ``loss`` and ``grad_norm``
    (and the gradients, an ``nnx.State``, if ``with_grads``)."""
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (_, terms), grads = grad_fn(model, batch, key)
    optimizer.update(model, grads)
    terms["grad_norm"] = optax.tree.norm(grads)
    return (terms, grads) if with_grads else terms


@xla_cpu.jit(objects=2, mutable=True)
def train_step(model, optimizer, batch, key):
    """One optimisation step; returns the loss terms, ``loss`` and ``grad_norm``."""
    return apply_step(model, optimizer, batch, key)


@xla_cpu.jit
def eval_losses(model, batch, key):
    """The same loss terms without an update (validation loss)."""
    return loss_fn(model, batch, key)[1]


def to_device_batch(batch):
    """Keep the model's keys and turn them into arrays (uint8 images stay uint8)."""
    return jax.tree.map(jnp.asarray, check_batch(batch))
