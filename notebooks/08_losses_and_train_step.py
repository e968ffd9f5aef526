# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/08_losses_and_train_step.ipynb)
#
# # 08 · Losses and the train step
#
# *Five loss terms add up to one number; one jitted function turns it into a parameter update,
# and the loss on one batch goes down.*
#
# **You will learn**
# - the five terms of Mask R-CNN's loss (RPN objectness and box, box classifier and regression,
#   mask), what each should be at initialisation, and how they add up;
# - one jitted training step, `mrcnn_jax.training.train_step` (one jit, SGD with momentum,
#   weight decay, warm-up and gradient clipping from `make_optimizer`);
# - what `nnx.jit` does for you: the same step as a **pure function** of `(params, opt_state)`
#   with `nnx.split` / `nnx.merge` under plain `jax.jit`, and a check that both agree;
# - tracing and compiling once: a new batch of the same shapes reuses the compiled program;
# - explicit randomness, `jax.random.fold_in(key, step)`;
# - overfitting one batch as the first sanity check, and what to watch: NaNs, exploding losses,
#   the gradient norm.
#
# Compiling the full model is the slow part on a CPU (seconds to tens of seconds per program;
# each cell prints its compile time), so this notebook compiles three programs and reuses them:
# the forward pass, `train_step`, and our pure step.

# %%
# Colab setup: on Colab, fetch this project at the notebooks' revision and install what the
# runtime lacks (the logic is mrcnn_jax/colab.py); anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import importlib.util
    import os
    import subprocess

    REPO = "/content/mrcnn_jax"
    if not os.path.isdir(REPO):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "v0.2.0",
                        "https://github.com/mrcnn-jax/mrcnn_jax", REPO], check=True)
    spec = importlib.util.spec_from_file_location("colab_setup", f"{REPO}/mrcnn_jax/colab.py")
    colab_setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_setup)
    colab_setup.setup(REPO)  # installs, moves into notebooks/, prints jax.devices()

# %%
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from mrcnn_jax import plotting, xla_cpu
from mrcnn_jax.config import small_config
from mrcnn_jax.data import make_loader, shapes_source
from mrcnn_jax.losses import binary_cross_entropy_with_logits, smooth_l1
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.roi_heads import box_losses, mask_loss
from mrcnn_jax.training import LOSS_TERMS, compute_losses, loss_fn, make_optimizer, train_step

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
IMAGE = 64 if FAST else 128  # input size: compile time and step time grow with it
STEPS = 12 if FAST else 40  # overfitting steps on one batch
BATCH = 2
WARMUP = 5  # short warm-up: we want to see the loss move within a few dozen steps
print(f"FAST={FAST}: {BATCH} images of {IMAGE}x{IMAGE}, {STEPS} steps")

# %% [markdown]
# ## 1. A batch and a model
#
# Two shapes images (notebook 00), resized to the model's input size, ground truth padded to
# `G = 8` slots; and a fresh `MaskRCNN` with the small config (ResNet-18-FPN, GroupNorm).
# A second batch of the same shapes will show that nothing is recompiled.

# %%
train = shapes_source("train", num_train=200, num_val=20, image_size=128, seed=0)
loader = iter(make_loader(train, batch_size=BATCH, image_size=IMAGE, max_instances=8, train=False))
KEYS = ("images", "boxes", "labels", "masks", "valid")  # what the model needs
batch, next_batch = [{k: jnp.asarray(v[k]) for k in KEYS} for v in (next(loader), next(loader))]
for k in KEYS:
    print(f"{k:7s} {str(batch[k].shape):18s} {batch[k].dtype}")
print("objects per image:", batch["valid"].sum(axis=1), "and", next_batch["valid"].sum(axis=1))

config = small_config(image_size=(IMAGE, IMAGE))
model = MaskRCNN(config, rngs=nnx.Rngs(0))
base_key = jax.random.key(0)

# %% [markdown]
# ## 2. The five loss terms, by hand
#
# `MaskRCNN.train_forward(batch, key)` returns raw predictions and their targets (the key drives
# the RPN's and the RoI heads' samplers). The loss is a separate pure function of those outputs.
# We jit the forward pass once and write the loss inline. The key is the one training step 0
# will use (section 3 explains `fold_in`). JAX runs work **asynchronously**: a jitted call returns
# as soon as the computation is queued, before its results exist. `jax.block_until_ready(x)`
# waits until every array in `x` is computed, so the timer below measures tracing, compiling and
# running, not just queueing.

# %%
forward = nnx.jit(lambda m, b, k: m.train_forward(b, k))
key0 = jax.random.fold_in(base_key, 0)
start = time.perf_counter()
outputs = jax.block_until_ready(forward(model, batch, key0))
print(f"forward: traced and compiled in {time.perf_counter() - start:.0f} s")
for k in ("rpn_logits", "rpn_deltas", "class_logits", "box_deltas", "mask_logits", "mask_targets"):
    print(f"  {k:13s} {outputs[k].shape}")

# %% [markdown]
# The RPN terms (notebook 06): binary cross-entropy of the objectness logits over the **sampled**
# anchors, and smooth-L1 (`beta = 1/9`) on the deltas of the **positive** anchors, both divided by
# the number of sampled anchors. The three head terms are notebook 07's `box_losses` and
# `mask_loss`. Mask R-CNN's loss is their plain, unweighted sum:
# `L = L_rpn_cls + L_rpn_box + L_cls + L_box + L_mask`. (`RoIHeadsConfig.mask_loss_weight`
# can weigh the mask term more: `shapes_config`, the preset of the README's default training run
# `python -m mrcnn_jax.train`, does, notebook 09. This notebook's `small_config` keeps the
# paper's weight 1.)

# %%
def my_rpn_losses(logits, deltas, targets, beta=config.rpn.smooth_l1_beta):
    sampled, positive = np.asarray(targets["sampled"]), np.asarray(targets["positive"])  # (B, A)
    count = max(sampled.sum(), 1)
    bce = binary_cross_entropy_with_logits(logits, targets["labels"])  # (B, A)
    box = smooth_l1(deltas - targets["deltas"], beta).sum(axis=-1)  # (B, A)
    return {"rpn_objectness": np.asarray(bce)[sampled].sum() / count,
            "rpn_box": np.asarray(box)[positive].sum() / count}


def my_losses(out, config):
    terms = my_rpn_losses(out["rpn_logits"], out["rpn_deltas"], out["rpn_targets"])
    terms.update(box_losses(out["class_logits"], out["box_deltas"], out["samples"],
                            config.roi_heads.smooth_l1_beta))
    terms["mask"] = mask_loss(out["mask_logits"], out["mask_labels"], out["mask_targets"], out["mask_valid"])
    terms["loss"] = sum(terms[k] for k in LOSS_TERMS)
    return {k: float(v) for k, v in terms.items()}


mine = my_losses(outputs, config)
for k, v in mine.items():
    print(f"  {k:15s} {v:.4f}")

# %% [markdown]
# Two of them can be checked by hand. At initialisation the RPN's objectness logits are close to
# 0 (its convs start with std 0.01), so every sampled anchor costs about `log 2 ≈ 0.693`;
# the box classifier's `K = 4` logits are also near 0, so each RoI costs about
# `log 4 ≈ 1.386`. The box-regression and mask terms depend on the untrained features.

# %%
print(f"rpn_objectness {mine['rpn_objectness']:.4f} vs log 2 = {math.log(2):.4f}")
print(f"box_classifier {mine['box_classifier']:.4f} vs log 4 = {math.log(4):.4f}")
assert abs(mine["rpn_objectness"] - math.log(2)) < 0.05
assert abs(mine["box_classifier"] - math.log(config.num_classes)) < 0.1

# %% [markdown]
# The package's `compute_losses` on the same outputs:

# %%
theirs = compute_losses(outputs, config)
for k in mine:
    np.testing.assert_allclose(mine[k], float(theirs[k]), rtol=1e-5, err_msg=k)
print("inline losses == mrcnn_jax.training.compute_losses; terms:", LOSS_TERMS)

# %% [markdown]
# ## 3. Explicit randomness: `fold_in(key, step)`
#
# The samplers pick anchors and RoIs at random, from the key we pass. No global seed, no hidden
# state: the same key gives the same samples, and step `s` of training uses
# `jax.random.fold_in(base_key, s)`. Unlike splitting a key in a loop, this needs no key
# carried from step to step: a run resumed at step 1000 draws exactly what it would have drawn.
# The forward pass is compiled already, so trying a few keys is cheap.

# %%
def sampled_rois(key):
    return np.asarray(forward(model, batch, key)["samples"]["rois"])  # (B, S, 4)


same = sampled_rois(jax.random.fold_in(base_key, 3))
again = sampled_rois(jax.random.fold_in(base_key, 3))
other = sampled_rois(jax.random.fold_in(base_key, 4))
print("step 3 twice: identical RoIs:", np.array_equal(same, again))
print(f"step 3 vs step 4: {np.mean(np.any(same != other, axis=-1)):.0%} of the RoI slots differ")
assert np.array_equal(same, again) and not np.array_equal(same, other)

# %% [markdown]
# ## 4. One jitted step: `train_step`
#
# `make_optimizer` builds the paper's optimiser with optax, SGD with momentum 0.9 and weight
# decay `1e-4 · w`, plus two additions the paper does not describe: a learning rate that warms up
# linearly from `0.001 · lr` (the factor of torchvision's detection reference script; given
# `total_steps` it then decays along a cosine), and clipping of the global gradient norm at 10,
# applied first. `nnx.Optimizer` keeps the
# optax state beside the model and updates only `nnx.Param` variables.

# %%
optimizer = make_optimizer(model, learning_rate=0.02, warmup_steps=WARMUP)
schedule = optax.linear_schedule(0.02 * 0.001, 0.02, WARMUP)  # the same schedule, to print it
print("learning rate at steps 0..6:", [round(float(schedule(s)), 5) for s in range(7)])

# %% [markdown]
# `train_step(model, optimizer, batch, key)` is one jitted call: forward, the five terms,
# gradients with respect to the `nnx.Param` state, the optimizer update, all in one compiled
# program. It updates `model` and `optimizer` in place and returns the terms (evaluated at the
# parameters *before* the update) and the gradient norm. Before calling it we keep a copy of the
# starting point for section 5. `nnx.split` (notebook 05) takes filters here:
# `nnx.split(model, nnx.Param, ...)` returns the `graphdef` and then one state per filter, in
# order: the `nnx.Param` variables, then `...`, everything else (section 5 explains why).

# %%
graphdef, start_params, start_rest = nnx.split(model, nnx.Param, ...)  # structure, Param state, the rest
start_params = jax.tree.map(jnp.copy, start_params)  # a copy: train_step updates the model in place
start_rest = jax.tree.map(jnp.copy, start_rest)
print("parameters:", sum(x.size for x in jax.tree.leaves(start_params)), "in",
      len(jax.tree.leaves(start_params)), "arrays; other variables:", len(jax.tree.leaves(start_rest)))

start = time.perf_counter()
step0 = jax.block_until_ready(train_step(model, optimizer, batch, key0))
print(f"train_step: traced and compiled in {time.perf_counter() - start:.0f} s")
print({k: round(float(v), 4) for k, v in step0.items()})

# %% [markdown]
# The terms it reports are those of section 2: the same parameters, batch and key.

# %%
for k in LOSS_TERMS + ("loss",):
    np.testing.assert_allclose(float(step0[k]), mine[k], rtol=1e-4, err_msg=k)
print("train_step's terms == the inline losses of section 2")

# %% [markdown]
# ## 5. The same step as a pure function
#
# JAX transformations (`jit`, `grad`) work on **pure functions of arrays**; an NNX module is a
# Python object with state. `nnx.split(model, nnx.Param, ...)` separates it into a static
# `graphdef` (the structure: which layers, which shapes, the config) and `State` pytrees of
# arrays (the parameters, then everything else); `nnx.merge(graphdef, params, rest)` builds a
# module back from them. So the step can be written with plain `jax.jit`, `jax.value_and_grad`
# over the parameter state, and the optimizer's optax transformation `tx`. `loss_fn` returns a
# pair `(loss, terms)`; with `has_aux=True`, `value_and_grad` differentiates only the first
# element, passes the second (auxiliary) one through, and returns `((loss, terms), grads)`:

# %%
tx = optimizer.tx  # the optax chain make_optimizer built: clip, weight decay, SGD + momentum
TRACES = 0


def pure_train_step(params, rest, opt_state, batch, key):
    global TRACES
    TRACES += 1  # a Python side effect: runs only while jax traces the function

    def loss_of(params):
        return loss_fn(nnx.merge(graphdef, params, rest), batch, key)  # (loss, terms)

    (_, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    terms["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, terms


# the XLA:CPU options train_step compiles with (end of this section), so both use the same kernels
pure_train_step = jax.jit(
    pure_train_step, compiler_options=xla_cpu.compiler_options(jax.default_backend()))
opt_state = tx.init(start_params)  # what nnx.Optimizer holds before its first update
start = time.perf_counter()
pure_params, pure_opt_state, pure0 = jax.block_until_ready(
    pure_train_step(start_params, start_rest, opt_state, batch, key0))
print(f"pure step: traced {TRACES} time(s), compiled in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# Same start, same batch, same key: the same loss and the same new parameters as `train_step`.
# The first step's learning rate is tiny (`2e-5`, warm-up), so we compare the parameter
# **changes** rather than the parameters themselves, which would agree trivially.

# %%
for k in step0:
    np.testing.assert_allclose(float(pure0[k]), float(step0[k]), rtol=1e-4, err_msg=k)
flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
change_nnx = flat(nnx.state(model, nnx.Param)) - flat(start_params)
change_pure = flat(pure_params) - flat(start_params)
print(f"largest parameter change: {np.abs(change_nnx).max():.3g}; largest difference between the "
      f"two steps: {np.abs(change_nnx - change_pure).max():.3g}")
assert np.abs(change_nnx).max() > 0
np.testing.assert_allclose(change_pure, change_nnx, rtol=1e-3, atol=1e-3 * np.abs(change_nnx).max())
print("pure jax.jit step == nnx.jit train_step")

# %% [markdown]
# That is all `nnx.jit` and `nnx.Optimizer` do: split the module into arrays on the way in,
# merge them back and write the new values into the Python objects on the way out. `train_step`
# does exactly this itself (`mrcnn_jax.xla_cpu.jit`), because it also passes XLA:CPU compiler
# options, which `nnx.jit` does not take (`xla_cpu.py` says which and why).
# `train_step` also **donates** the model and optimizer buffers (`donate_argnums`), so on a GPU or
# TPU the new parameters can reuse the old ones' memory; the CPU ignores donation.
#
# ### Tracing once
#
# `jit` traces the Python function once per **shape and dtype signature** of its inputs and caches
# the compiled program. First a toy, where compiling is instant:

# %%
toy_traces = []


@jax.jit
def toy(x):
    toy_traces.append(x.shape)  # runs while tracing only
    return 2 * x


toy(jnp.ones(3))
toy(jnp.arange(3.0))  # new values, same shape: cached
toy(jnp.ones(4))  # new shape: traced and compiled again
print("traced for shapes:", toy_traces)
assert toy_traces == [(3,), (4,)]

# %% [markdown]
# Our batches have static shapes by construction (images resized and padded, ground truth padded
# to `G` slots, fixed numbers of proposals and RoIs), so a new batch is only new **values**:

# %%
start = time.perf_counter()
pure_params, pure_opt_state, pure1 = jax.block_until_ready(
    pure_train_step(pure_params, start_rest, pure_opt_state, next_batch, jax.random.fold_in(base_key, 1)))
print(f"pure step on a new batch: {time.perf_counter() - start:.2f} s; traced {TRACES} time(s) in all")
assert TRACES == 1
start = time.perf_counter()
jax.block_until_ready(train_step(model, optimizer, next_batch, jax.random.fold_in(base_key, 1)))
print(f"train_step on a new batch: {time.perf_counter() - start:.2f} s (no compile)")

# %% [markdown]
# ## 6. Overfitting one batch
#
# The first test of any training loop: a model with millions of parameters must be able to
# memorise two images. If the loss does not go down on one batch, something is broken (a target,
# a stop-gradient, a sign, the learning rate), and more data will not fix it. We keep training the
# `train_step` model on `batch` (step 1 above used the other batch), each step with its own key,
# and check every loss for NaN or infinity as it comes.

# %%
history = [{k: float(v) for k, v in step0.items()}]
start = time.perf_counter()
for step in range(2, STEPS + 1):
    metrics = train_step(model, optimizer, batch, jax.random.fold_in(base_key, step))
    metrics = {k: float(v) for k, v in metrics.items()}  # float() waits for the step
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"step {step}: non-finite loss {metrics}")
    history.append(metrics)
print(f"{STEPS - 1} steps in {time.perf_counter() - start:.1f} s")
print(f"loss: {history[0]['loss']:.3f} at step 0 -> {history[-1]['loss']:.3f} at step {STEPS}")
assert history[-1]["loss"] < 0.8 * history[0]["loss"], "the loss on one batch must go down"

# %%
steps = [0] + list(range(2, STEPS + 1))
fig, axes = plotting.subplots(ncols=2, size=4.2)
for i, k in enumerate(LOSS_TERMS + ("loss",)):
    axes[0].plot(steps, [h[k] for h in history], color="black" if k == "loss" else plotting.colour(i),
                 linewidth=2.5 if k == "loss" else 1.5, label=k, marker="o", markersize=3)
axes[0].set_yscale("log")
axes[0].set_xlabel("step")
axes[0].set_title(f"loss terms on one batch ({IMAGE}x{IMAGE})", fontsize=10)
axes[0].legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
axes[1].plot(steps, [h["grad_norm"] for h in history], color=plotting.colour(0), marker="o", markersize=3)
axes[1].axhline(10.0, color=plotting.colour(2), linestyle="--", linewidth=1)
axes[1].text(steps[-1], 10.0, "clip_by_global_norm(10)", color=plotting.colour(2), fontsize=8,
             ha="right", va="bottom")
axes[1].set_yscale("log")
axes[1].set_xlabel("step")
axes[1].set_title("gradient norm (before clipping)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# The curves are not smooth, and need not be: each step draws new anchors and RoIs (its own
# `fold_in` key), the proposals move as the RPN learns, and the RoIs the box and mask heads see
# move with them. The box-regression term can even rise for a while: better proposals bring more
# (and harder) positives into the sample. The total is what must trend down.
#
# ## 7. What to watch
#
# - **NaN or inf.** One bad step poisons every parameter. Check the loss each step (as above; it
#   costs one device-to-host copy). To find the operation, rerun the step with
#   `jax.config.update("jax_debug_nans", True)` (slow: it reruns op by op). Usual suspects: a
#   division by a count that can be 0 (the losses divide by `max(count, 1)`), `log(0)` in a
#   hand-written cross-entropy (use the stable forms in `mrcnn_jax.losses`), `exp` of unclamped box
#   deltas (the `log(1000/16)` clamp of notebook 01), padded slots multiplied instead of masked
#   with `jnp.where`.
# - **Exploding losses.** A learning rate too high for the batch size makes the box terms jump
#   first. Warm-up (the first steps at `0.001 · lr`) and gradient clipping protect the start; if
#   the loss still climbs, lower the learning rate (the paper's 0.02 is for 16 images per step).
# - **The gradient norm**, which `train_step` returns. In the first steps it is above the clip
#   threshold, so those updates are scaled down to norm 10; a norm that keeps growing, or jumps by
#   orders of magnitude, announces a divergence before the loss shows it. A norm of exactly 0
#   means no gradient reaches the parameters.
# - **Each term separately.** A term stuck at its initial value (`log 2`, `log 4`) means its head
#   learns nothing: check its targets (notebooks 06 and 07) before anything else.
#
# ## Summary
#
# - The loss is the plain sum of five terms, each a pure function of the forward pass's outputs:
#   RPN objectness and box, box classifier and regression, mask. At initialisation the two
#   classification terms sit near `log 2` and `log K`.
# - `train_step` is one jitted call: forward, loss, gradients over `nnx.Param`, optimizer update
#   (clip at norm 10, weight decay, SGD with momentum, warm-up).
# - Under it is a pure function: `nnx.split` the model into a `graphdef` and arrays, differentiate
#   with respect to the parameter arrays, update them with optax, `nnx.merge` to get a module back.
#   Both give the same step.
# - Static shapes mean one trace and one compile; every later batch reuses them.
# - Randomness comes from `jax.random.fold_in(base_key, step)`: reproducible and resumable.
# - Overfitting one batch is the first sanity check; watch for non-finite values, the gradient
#   norm and each term.
#
# ## Exercises
#
# Each exercise has a stub that raises `NotImplementedError` and a check that runs when you
# replace it. A wrong answer raises an `AssertionError` that says what was expected.
#
# ### Core exercises
#
# Here you write the stage this notebook teaches, and `mrcnn_jax.course` checks it: a hand
# example, random inputs against the package, named edge cases, a run under `jax.jit` (and
# gradients where the stage is differentiated). A check prints "correct", or "not attempted"
# while your function raises `NotImplementedError`, or raises an `AssertionError` that names the
# case, the inputs, expected and got, the largest error and, for a common mistake, a hint. Your
# function takes the same arguments as the package's, so any correct version passes.
#
# **Core exercise A: smooth L1, and its trap.** Write `your_smooth_l1(x, beta)`: `0.5 x^2 / beta`
# where `|x| < beta`, else `|x| - 0.5 beta`; `beta = 0` is plain L1. The check also takes the
# gradient: `jnp.where` differentiates *both* branches, so a division by `beta = 0` in the unused
# one still puts NaN in the gradient.

# %%
from mrcnn_jax.course import check_mask_loss, check_rpn_losses, check_smooth_l1


def your_smooth_l1(x, beta):
    # BEGIN SOLUTION
    if beta == 0:  # a Python number: a plain `if` is fine
        return jnp.abs(x)
    return jnp.where(jnp.abs(x) < beta, 0.5 * x ** 2 / beta, jnp.abs(x) - 0.5 * beta)
    # END SOLUTION


check_smooth_l1(your_smooth_l1)

# %% [markdown]
# **Core exercise B: the RPN losses over a padded batch.** Write `your_rpn_losses(logits (B, A),
# deltas (B, A, 4), targets, beta) -> {"rpn_objectness", "rpn_box"}` as `mrcnn_jax.rpn.rpn_losses`:
# `targets` holds `labels` (float 1/0), `deltas`, and the boolean masks `positive` and `sampled`;
# binary cross-entropy over the sampled anchors, smooth L1 summed over the positives' four
# deltas, both divided by the number sampled (at least 1). Mask with `jnp.where` *before*
# summing, and use a stable BCE.

# %%
def your_rpn_losses(logits, deltas, targets, beta):
    # BEGIN SOLUTION
    count = jnp.maximum(jnp.sum(targets["sampled"]), 1)
    bce = (jnp.maximum(logits, 0) - logits * targets["labels"]
           + jnp.log1p(jnp.exp(-jnp.abs(logits))))  # (B, A) stable
    box = jnp.sum(your_smooth_l1(deltas - targets["deltas"], beta), axis=-1)  # (B, A)
    return {"rpn_objectness": jnp.sum(jnp.where(targets["sampled"], bce, 0.0)) / count,
            "rpn_box": jnp.sum(jnp.where(targets["positive"], box, 0.0)) / count}
    # END SOLUTION


check_rpn_losses(your_rpn_losses)

# %% [markdown]
# **Core exercise C: the mask loss.** Write `your_mask_loss(mask_logits (B, R, M, M, K), labels
# (B, R), targets (B, R, M, M), valid (B, R)) -> scalar` as `mrcnn_jax.roi_heads.mask_loss`: mean
# per-pixel BCE on each RoI's own class channel, averaged over the valid RoIs.

# %%
def your_mask_loss(mask_logits, labels, targets, valid):
    # BEGIN SOLUTION
    chosen = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
    bce = (jnp.maximum(chosen, 0) - chosen * targets
           + jnp.log1p(jnp.exp(-jnp.abs(chosen))))  # (B, R, M, M)
    per_roi = jnp.mean(bce, axis=(2, 3))  # (B, R)
    return jnp.sum(jnp.where(valid, per_roi, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    # END SOLUTION


check_mask_loss(your_mask_loss)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: the learning-rate schedule.** With `total_steps`, `make_optimizer` warms up
# linearly from `0.001 · lr` to `lr` over `warmup_steps`, then decays along half a cosine to 0 at
# `total_steps`. Write `my_schedule(step, lr, warmup_steps, total_steps)` in plain Python.

# %%
def check_schedule(fn):
    lr, warmup, total = 0.02, 10, 100
    reference = optax.warmup_cosine_decay_schedule(lr * 0.001, lr, warmup, total)
    for step in (0, 1, 5, 10, 11, 40, 55, 99, 100):
        got, expected = float(fn(step, lr, warmup, total)), float(reference(step))
        assert abs(got - expected) < 1e-7, f"step {step}: expected {expected:.7f}, got {got:.7f}"


def my_schedule(step, lr, warmup_steps, total_steps):
    raise NotImplementedError


try:
    check_schedule(my_schedule)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: the optimizer by hand.** Write `my_sgd_step(params, grads, velocity, lr)` for a
# dict of arrays, returning `(new_params, new_velocity)`: clip the gradients to a global norm of
# at most 10 (scale all of them by `min(1, 10 / norm)`), add `1e-4 · params`, then
# `velocity = 0.9 · velocity + g` and `params = params - lr · velocity` (optax's SGD momentum).
# It must equal `make_optimizer`'s transformation at a constant learning rate.

# %%
def check_sgd_step(fn):
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([0.5])}
    tx_ref = optax.chain(optax.clip_by_global_norm(10.0), optax.add_decayed_weights(1e-4),
                         optax.sgd(0.01, momentum=0.9))
    state = tx_ref.init(params)
    p, v = params, {k: jnp.zeros_like(x) for k, x in params.items()}
    for step, scale in enumerate([1.0, 20.0, 0.5]):  # the second gradient gets clipped
        grads = {"w": scale * jnp.array([0.3, 0.4, -1.2]), "b": scale * jnp.array([2.0])}
        updates, state = tx_ref.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        p, v = fn(p, grads, v, 0.01)
        for k in params:
            np.testing.assert_allclose(np.asarray(p[k]), np.asarray(params[k]), rtol=1e-5, atol=1e-7,
                                       err_msg=f"step {step}, parameter {k}")


def my_sgd_step(params, grads, velocity, lr):
    raise NotImplementedError


try:
    check_sgd_step(my_sgd_step)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: static or traced?** A loss weight passed as a Python float to a function jitted
# with `static_argnums` is baked into the program: each new value compiles again (for the full
# model, a minute each). Write `make_weighted_loss()` returning a jitted
# `weighted(x, weight) -> weight · sum(x²)` that compiles **once** for the weights 1.0, 2.0, 3.0.
# (The check counts compilations with the jitted function's `_cache_size()`.)

# %%
def check_weighted_loss(make):
    fn = make()
    x = jnp.array([1.0, 2.0])
    for w in (1.0, 2.0, 3.0):
        got = float(fn(x, w))
        assert abs(got - 5.0 * w) < 1e-6, f"weight {w}: expected {5.0 * w}, got {got}"
    assert hasattr(fn, "_cache_size"), "return the function made by jax.jit"
    assert fn._cache_size() == 1, f"compiled {fn._cache_size()} times for 3 weights; expected once"


def make_weighted_loss():
    raise NotImplementedError


try:
    check_weighted_loss(make_weighted_loss)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: keys for every sampler.** A step needs independent keys for the RPN sampler, the
# RoI sampler and, say, a data augmentation. Write `step_keys(base_key, step)` returning a dict
# `{"rpn", "roi", "augment"}` of keys that depend only on `(base_key, step)`, differ from each
# other and from step to step, and never equal `fold_in(base_key, step)` itself (which
# `train_step` receives whole). Hint: `jax.random.split`, or `fold_in` twice.

# %%
def check_step_keys(fn):
    data = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel())
    seen = {data(jax.random.fold_in(base_key, s)) for s in range(4)}
    for s in range(4):
        keys = fn(base_key, s)
        assert set(keys) == {"rpn", "roi", "augment"}, f"expected keys rpn, roi, augment; got {sorted(keys)}"
        assert {data(k) for k in keys.values()} == {data(k) for k in fn(base_key, s).values()}, "not reproducible"
        for name, k in keys.items():
            assert data(k) not in seen, f"step {s}: key {name!r} repeats another step's or another sampler's key"
            seen.add(data(k))


def step_keys(base_key, step):
    raise NotImplementedError


try:
    check_step_keys(step_keys)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
