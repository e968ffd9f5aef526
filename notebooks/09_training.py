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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/09_training.ipynb)
#
# # 09 · Training
#
# *The training loop written out, then the same loop as a command: schedule, logging,
# checkpoints that resume exactly, and the signs that training has gone wrong.*
#
# **You will learn**
# - the loop in ten lines: batch `i` is `loader.dataset[i]`, the key of step `i` is
#   `fold_in(base_key, i)`, one `train_step`, a finiteness check, a log line;
# - the learning-rate schedule of `make_optimizer`: linear warm-up, then half a cosine to 0;
# - loss curves per term, and a validation loss (`eval_losses`) as the overfitting signal;
# - the command `python -m mrcnn_jax.train` (`mrcnn_jax.train.main`): `metrics.jsonl`, the loss
#   curve, Orbax checkpoints, and `--stop_after` / `--resume` giving the **same** parameters as
#   an uninterrupted run;
# - what to watch: NaNs (`jnp.isfinite`, `FloatingPointError`), exploding losses at a learning
#   rate that is too high, and what gradient clipping does about them.
#
# Compiling on a CPU is the slow part: a new optimizer is a new program for `train_step`
# (its optax transformation is part of what the jit traces), so each run below compiles once.

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
import argparse
import inspect
import json
import logging
import math
import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from mrcnn_jax import checkpoints, plotting, train
from mrcnn_jax.config import small_config
from mrcnn_jax.data import make_loader, shapes_source
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.training import (LOSS_TERMS, eval_losses, loss_fn, make_optimizer,
                                to_device_batch, train_step)

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
IMAGE, STEPS, NUM_TRAIN, NUM_VAL = (64, 24, 32, 8) if FAST else (128, 200, 1000, 100)
BATCH, LR, WARMUP, MAX_INSTANCES = 4, 0.02, 5 if FAST else 20, 6
EVAL_EVERY = 8 if FAST else 40
WORK = pathlib.Path(tempfile.mkdtemp(prefix="mrcnn_09_"))  # every work directory of this notebook
print(f"FAST={FAST}: {STEPS} steps of {BATCH} images at {IMAGE}x{IMAGE}; work dirs under {WORK}")

# %% [markdown]
# ## 1. The learning-rate schedule
#
# `make_optimizer(model, lr, warmup_steps, total_steps)` chains gradient clipping, weight decay
# and SGD with momentum 0.9, with a learning rate that rises linearly from `0.001 · lr` to `lr`
# over `warmup_steps`, then follows half a cosine down to 0 at `total_steps`:
#
# `lr(s) = lr · ½ (1 + cos(π (s - warmup) / (total - warmup)))` for `s ≥ warmup`.
#
# Three values by hand, for `lr = 0.02`, warm-up 5, 25 steps: step 0 gives `2e-5`, step 5 gives
# `0.02`, and step 24 (the last update) gives `0.02 · ½ (1 + cos(π · 19/20)) ≈ 1.23e-4`.

# %%
def my_lr(step, lr, warmup, total):
    if step < warmup:
        return lr * 0.001 + (lr - lr * 0.001) * step / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


for s in (0, 5, 24):
    print(f"step {s:2d}: {my_lr(s, 0.02, 5, 25):.6g}")
assert abs(my_lr(0, 0.02, 5, 25) - 2e-5) < 1e-12 and abs(my_lr(5, 0.02, 5, 25) - 0.02) < 1e-12
assert abs(my_lr(24, 0.02, 5, 25) - 0.02 * 0.5 * (1 + math.cos(math.pi * 19 / 20))) < 1e-12

# %% [markdown]
# The schedule lives inside the optax chain, so we read it off the optimizer itself: on a
# one-parameter model with momentum and weight decay switched off, a gradient of 1 gives an
# update of exactly `-lr(s)`.

# %%
def lr_of_make_optimizer(lr, warmup, total):
    probe = nnx.Linear(1, 1, use_bias=False, rngs=nnx.Rngs(0))
    opt = make_optimizer(probe, lr, momentum=0.0, weight_decay=0.0, warmup_steps=warmup,
                         total_steps=total)
    params = nnx.state(probe, nnx.Param)
    ones = jax.tree.map(jnp.ones_like, params)
    state, rates = opt.tx.init(params), []
    for _ in range(total):
        updates, state = opt.tx.update(ones, state, params)
        rates.append(-float(jax.tree.leaves(updates)[0].ravel()[0]))
    return np.array(rates)


rates = lr_of_make_optimizer(0.02, 5, 25)
np.testing.assert_allclose(rates, [my_lr(s, 0.02, 5, 25) for s in range(25)], rtol=1e-4)  # float32
print("make_optimizer's learning rates == my_lr at every step; step 0, 5, 24:",
      rates[[0, 5, 24]].round(6))

# %% [markdown]
# The schedule of the run below, and of the README's default training run,
# `python -m mrcnn_jax.train` with its default arguments (read from the command's own parser):

# %%
defaults = train.parse_args([])  # the command's defaults: --steps, --warmup, --lr, ...
print(f"python -m mrcnn_jax.train: --steps {defaults.steps} --warmup {defaults.warmup} --lr {defaults.lr}"
      f" --batch_size {defaults.batch_size}")
fig, axes = plotting.subplots(ncols=2, size=4.0)
for ax, (lr, warmup, total) in zip(axes, [(LR, WARMUP, STEPS),
                                          (defaults.lr, defaults.warmup, defaults.steps)], strict=True):
    steps = np.arange(total)
    ax.plot(steps, [my_lr(s, lr, warmup, total) for s in steps], color=plotting.colour(0))
    ax.axvline(warmup, color=plotting.colour(1), linestyle="--", linewidth=1)
    ax.text(warmup, lr * 0.5, " end of warm-up", color=plotting.colour(1), fontsize=8)
    ax.set_xlabel("step")
    ax.set_title(f"lr {lr}, warm-up {warmup}, {total} steps", fontsize=10)
axes[0].set_ylabel("learning rate")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The loop, inline
#
# Data: shapes images (notebook 00) drawn at the model's input size. `make_loader(...,
# num_epochs=None)` repeats forever, and `loader.dataset[i]` is batch `i`, a pure function of
# the seed and `i` (shuffle order and flips included). Together with `fold_in(base_key, i)` for
# the samplers, step `i` is the same whether the run started at 0 or was resumed at `i`.

# %%
train_source = shapes_source("train", num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE, seed=0)
val_source = shapes_source("validation", num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE, seed=0)
loader = make_loader(train_source, BATCH, image_size=IMAGE, max_instances=MAX_INSTANCES, seed=0,
                     num_epochs=None)
first = loader.dataset[0]
print({k: v.shape for k, v in first.items() if k in ("images", "boxes", "masks", "valid")})
np.testing.assert_array_equal(loader.dataset[0]["images"], first["images"])  # reproducible

# %% [markdown]
# The validation loss is the training loss on held-out images, computed with `eval_losses`
# (same terms, no update). The samplers still draw at random, so a fixed key per batch makes it
# comparable from one evaluation to the next. `to_device_batch` keeps the keys the model reads
# (`images`, `boxes`, `labels`, `masks`, `valid`; it raises if one is missing) and turns them into
# JAX arrays.

# %%
val_loader = make_loader(val_source, BATCH, image_size=IMAGE, max_instances=MAX_INSTANCES, train=False)
VAL_BATCHES = [to_device_batch(b) for b, _ in zip(val_loader, range(2), strict=False)]


def my_validation_loss(model):
    terms = [eval_losses(model, b, jax.random.key(i)) for i, b in enumerate(VAL_BATCHES)]
    return {k: float(np.mean([t[k] for t in terms])) for k in terms[0]}


# %% [markdown]
# The loop. `float(...)` waits for the step to finish; the check for a non-finite loss costs
# nothing more. The first step traces and compiles `train_step`.

# %%
config = small_config(image_size=(IMAGE, IMAGE))
model = MaskRCNN(config, rngs=nnx.Rngs(0))
optimizer = make_optimizer(model, LR, warmup_steps=WARMUP, total_steps=STEPS)
base_key = jax.random.key(0)
history = []
began = time.perf_counter()
for step in range(STEPS):
    batch = to_device_batch(loader.dataset[step])
    metrics = {k: float(v) for k, v in train_step(model, optimizer, batch,
                                                  jax.random.fold_in(base_key, step)).items()}
    if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(f"loss became {metrics['loss']} at step {step}")
    metrics["step"] = step + 1
    if (step + 1) % EVAL_EVERY == 0 or step == 0:
        metrics["val"] = my_validation_loss(model)
    history.append(metrics)
    if step == 0 or (step + 1) % EVAL_EVERY == 0:
        val = f"  val {metrics['val']['loss']:.3f}" if "val" in metrics else ""
        print(f"step {step + 1:4d}  loss {metrics['loss']:.3f}  grad_norm {metrics['grad_norm']:7.2f}"
              f"{val}  ({time.perf_counter() - began:.0f} s)")
first5 = np.mean([h["loss"] for h in history[:5]])
last5 = np.mean([h["loss"] for h in history[-5:]])
print(f"mean loss of the first 5 steps {first5:.3f}, of the last 5 {last5:.3f}")
assert last5 < 0.8 * first5, "the training loss must go down"

# %% [markdown]
# The validation loss of the command (`train.validation_loss`) is this same computation; on the
# same batches and keys it agrees with ours.

# %%
args = argparse.Namespace(data_dir=None, batch_size=BATCH, image_size=IMAGE, max_instances=MAX_INSTANCES)
data = {"num_train": NUM_TRAIN, "num_val": NUM_VAL, "image_size": IMAGE, "seed": 0}
theirs = train.validation_loss(model, args, data, batches=len(VAL_BATCHES))
ours = my_validation_loss(model)
for k in ours:
    np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, err_msg=k)
print(f"validation loss {ours['loss']:.4f} == train.validation_loss {theirs['loss']:.4f}")

# %% [markdown]
# ## 3. Loss curves, per term
#
# One curve per term (log scale), the total in black, the validation loss as points. The terms
# move at different speeds and every one is noisy from step to step (each step samples new
# anchors and RoIs, on a new batch); the RPN's objectness sits at `log 2` for the first steps,
# then falls. The overfitting signal is the gap: a training loss that keeps falling while the
# validation loss turns up means the model memorises its training images. In a run this short
# both still fall together.

# %%
def plot_history(ax, rows, title):
    steps = [r["step"] for r in rows]
    for i, k in enumerate(LOSS_TERMS):
        ax.plot(steps, [r[k] for r in rows], color=plotting.colour(i), linewidth=1, label=k)
    ax.plot(steps, [r["loss"] for r in rows], color="black", linewidth=1.5, label="loss")
    val = [(r["step"], r["val"]["loss"]) for r in rows if "val" in r]
    ax.plot(*zip(*val, strict=True), "o", color=plotting.colour(5), markeredgecolor="black",
            label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)


fig, axes = plotting.subplots(ncols=2, size=4.2)
plot_history(axes[0], history, f"loss terms ({IMAGE}x{IMAGE}, batch {BATCH})")
axes[0].legend(fontsize=7, ncol=2)
axes[1].plot([h["step"] for h in history], [h["grad_norm"] for h in history], color=plotting.colour(0))
axes[1].axhline(10.0, color=plotting.colour(2), linestyle="--", linewidth=1)
axes[1].set_yscale("log")
axes[1].set_xlabel("step")
axes[1].set_title("gradient norm (clipped at 10)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Checkpoints with Orbax
#
# A checkpoint is the model's and the optimizer's state (parameters, momentum, step count) as
# pure dicts of arrays. `checkpoints.save` writes `checkpoints/<step>/` through an Orbax
# `CheckpointManager`, which writes to a temporary folder and renames it when complete: a run
# killed mid-save keeps its previous checkpoint. `checkpoints.restore` loads it into a fresh
# model and optimizer in place.

# %%
mngr = checkpoints.manager(WORK / "inline")
checkpoints.save(mngr, STEPS, model, optimizer)
print("saved:", sorted(p.name for p in (WORK / "inline" / "checkpoints").iterdir()))
fresh = MaskRCNN(config, rngs=nnx.Rngs(1))  # other random weights
fresh_opt = make_optimizer(fresh, LR, warmup_steps=WARMUP, total_steps=STEPS)
print("restored step", checkpoints.restore(mngr, fresh, fresh_opt))
for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(fresh)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
for a, b in zip(jax.tree.leaves(nnx.state(optimizer)), jax.tree.leaves(nnx.state(fresh_opt)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
print("parameters and optimizer state (momentum, step count) restored exactly")

# %% [markdown]
# ## 5. The command: `mrcnn_jax.train.main`
#
# `python -m mrcnn_jax.train` runs the loop of section 2 with a progress bar, writes every
# step's metrics to `metrics.jsonl`, the validation loss every `--eval_every` steps and at the
# end, checkpoints every `--checkpoint_every` steps and at the end, then `loss_curve.png` and
# (unless `--no_final_eval`) COCO AP on the held-out split (notebook 10). `main(argv)` takes the
# same arguments as a list. Its default model is `shapes_config()`, `small_config()` tuned on the
# shapes for the README's default training run above (PyTorch's default init for the backbone
# convolutions and no zero-init residual, two anchor scales per level, a narrower mask head,
# fewer sampled RoIs with more of them positive, binary mask targets, the mask term weighted 3 in
# the loss, test-time settings for overlapping shapes and masks averaged with the mirrored
# image's (notebook 10); docs/tuning_notes.md gives each one's measured effect);
# `--preset small` trains the model of section 2. A tiny setting: 32 images of 64x64,
# 20 steps.

# %%
TINY = ["--preset", "small", "--num_train", "32", "--num_val", "8", "--image_size", "64", "--batch_size", "4",
        "--steps", "20", "--warmup", "5", "--lr", "0.02", "--eval_every", "10",
        "--checkpoint_every", "10", "--max_instances", "6"]
straight = WORK / "straight"
train.main([*TINY, "--workdir", str(straight), *(["--no_final_eval"] if FAST else [])])
plt.close("all")  # the command's own figures are files; we show them below
print(sorted(p.name for p in straight.iterdir()))

# %% [markdown]
# `metrics.jsonl` has one JSON object per step: the terms, `grad_norm`, `images_per_s`, and
# `val` where the validation loss was computed. `run.json` records the config, the data settings
# (resize, mask crops) and the schedule, so `checkpoints.restore_model(workdir)` rebuilds the
# model without the command line.

# %%
rows = [json.loads(line) for line in (straight / "metrics.jsonl").open()]
print(len(rows), "rows; the last:", {k: (round(v, 3) if isinstance(v, float) else v)
                                    for k, v in rows[-1].items() if k != "val"})
print("validation loss at steps", [r["step"] for r in rows if "val" in r])
assert [r["step"] for r in rows] == list(range(1, 21))
print("run.json keys:", sorted(checkpoints.read_run(straight)))

# %%
fig, axes = plotting.subplots(ncols=2, size=4.0)
plot_history(axes[0], rows, "metrics.jsonl of the tiny run")
axes[0].legend(fontsize=7, ncol=2)
plotting.show_image(axes[1], plt.imread(straight / "loss_curve.png"), "its loss_curve.png")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Stop, resume, and get the same run
#
# `--stop_after 10` checkpoints and stops after 10 steps; `--resume` restores the latest
# checkpoint (parameters **and** momentum and step count) and continues at step 10 with batch 10
# and key `fold_in(base_key, 10)`. Nothing else carries state from step to step, so the resumed
# run must end with the parameters of the uninterrupted one (up to float reordering).

# %%
halves = WORK / "halves"
train.main([*TINY, "--workdir", str(halves), "--stop_after", "10", "--no_final_eval"])
print("checkpoints after stopping:", sorted(p.name for p in (halves / "checkpoints").iterdir()))
train.main([*TINY, "--workdir", str(halves), "--resume", "--no_final_eval"])
plt.close("all")

# %%
a, _ = checkpoints.restore_model(straight)
b, _ = checkpoints.restore_model(halves)
leaves_a, leaves_b = jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))
diff = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(leaves_a, leaves_b, strict=True))
for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
resumed_rows = [json.loads(line) for line in (halves / "metrics.jsonl").open()]
assert [r["step"] for r in resumed_rows] == list(range(1, 21))
np.testing.assert_allclose([r["loss"] for r in resumed_rows], [r["loss"] for r in rows], rtol=1e-4)
print(f"resumed == uninterrupted: {len(leaves_a)} arrays, largest difference {diff:.2g}; "
      "the 20 logged losses agree too")

# %% [markdown]
# ## 7. What to watch
#
# ### NaNs and infinities
#
# One non-finite value poisons every parameter it touches at the next update. Check every loss
# (`math.isfinite`, or `jnp.isfinite` on arrays and whole pytrees). A batch with a NaN box shows
# what a bad input does, through `eval_losses` (no update, the model is unharmed):

# %%
bad = dict(VAL_BATCHES[0])
bad["boxes"] = bad["boxes"].at[0, 0, 0].set(jnp.nan)
terms = eval_losses(model, bad, jax.random.key(0))
print({k: float(v) for k, v in terms.items()})
finite = {k: bool(jnp.isfinite(v)) for k, v in terms.items()}
print("finite:", finite)
assert not finite["loss"]
print("all parameters finite:", all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(nnx.state(model))))

# %% [markdown]
# The command stops at the first non-finite loss, before it is logged or checkpointed, so the
# latest checkpoint is still a good one. From `mrcnn_jax/train.py`:

# %%
source = inspect.getsource(train.train)
print("\n".join(line for line in source.splitlines() if "isfinite" in line or "FloatingPointError" in line))
assert "raise FloatingPointError" in source

# %% [markdown]
# ### Exploding losses
#
# A learning rate far too high makes the updates overshoot; the loss and the gradient norm grow
# step after step until they overflow. To try several optimizers without compiling `train_step`
# for each, we compile the **gradient** once and apply each optimizer's update outside `jit`
# (slower per step, but no compile). Same tiny model and batches as the command, 8 steps at a
# learning rate of 1.0 (50 times the default 0.02), no warm-up, with and without clipping.
#
# `nnx.value_and_grad` is `jax.value_and_grad` for functions that take modules.
# `argnums=nnx.DiffState(0, nnx.Param)` says what to differentiate: argument 0 (the model), and
# of it only the `nnx.Param` variables, so the gradient is a `State` with the parameters'
# structure. `has_aux=True`, as in notebook 08: `loss_fn` returns `(loss, terms)`, only `loss` is
# differentiated, and the result is `((loss, terms), grads)`.

# %%
grad_fn = nnx.jit(nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True))
tiny_config = small_config(image_size=(64, 64))
tiny_loader = make_loader(shapes_source("train", num_train=32, num_val=8, image_size=64, seed=0), 4,
                          image_size=64, max_instances=6, seed=0, num_epochs=None)
tiny_batches = [to_device_batch(tiny_loader.dataset[i]) for i in range(8)]


def run_with(lr, clip_norm, steps=8):
    net = MaskRCNN(tiny_config, rngs=nnx.Rngs(0))
    opt = make_optimizer(net, lr, warmup_steps=1, clip_norm=clip_norm)  # warm-up of 1 step: lr at once
    losses, norms = [], []
    for i in range(steps):
        (loss, _), grads = grad_fn(net, tiny_batches[i], jax.random.fold_in(base_key, i))
        losses.append(float(loss))
        norms.append(float(optax.tree.norm(grads)))
        if not math.isfinite(losses[-1]):
            break
        opt.update(net, grads)
    return losses, norms


began = time.perf_counter()
runs = {"lr 0.02, clip 10 (the default)": run_with(0.02, 10.0),
        "lr 1.0, no clipping": run_with(1.0, float("inf")),
        "lr 1.0, clip 10": run_with(1.0, 10.0)}
print(f"{time.perf_counter() - began:.0f} s")
for name, (losses, norms) in runs.items():
    print(f"{name:30s} loss {' '.join(f'{v:.3g}' for v in losses)}")
    print(f"{'':30s} grad {' '.join(f'{v:.3g}' for v in norms)}")

# %%
fig, axes = plotting.subplots(ncols=2, size=4.0)
for i, (name, (losses, norms)) in enumerate(runs.items()):
    axes[0].plot(losses, marker="o", markersize=3, color=plotting.colour(i), label=name)
    axes[1].plot(norms, marker="o", markersize=3, color=plotting.colour(i), label=name)
for ax, title in zip(axes, ["loss", "gradient norm (before clipping)"], strict=True):
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# Without clipping, the first gradients are ordinary (their norms, printed above, start like the
# default run's), but at learning rate 1.0 the updates they make are far too long: within a few
# steps the loss is astronomically large, and then NaN. The learning rate is the cause, not a
# freak gradient. Clipping rescales every gradient to a norm of at most 10 before momentum and
# the learning rate act on it, so each step has a bounded length: the run stays finite. It still
# diverges, though (its loss grows by orders of magnitude): clipping bounds the damage of a
# learning rate 50 times too high, it does not make it a good one. Warm-up bounds the steps at
# the start of a run, when gradients are largest. If the loss climbs anyway, lower the learning
# rate. The default 0.02 is the paper's value for 16 images per step; this notebook uses it at
# batch 4 (the loss of section 2 falls well) and the command at batch 8, but the usual rule when
# a batch shrinks is to shrink the learning rate in proportion.

# %%
unclipped, clipped = runs["lr 1.0, no clipping"], runs["lr 1.0, clip 10"]
recipe = runs["lr 0.02, clip 10 (the default)"]
assert not math.isfinite(unclipped[0][-1]) or max(unclipped[0]) > 100 * recipe[0][0], "expected a blow-up"
assert all(math.isfinite(v) for v in clipped[0]), "clipped updates should keep the loss finite"
assert max(clipped[0]) > 100 * recipe[0][0], "lr 1.0 still diverges with clipping"
assert max(recipe[0]) <= recipe[0][0] * 1.01 and math.isfinite(recipe[0][-1])
print(f"largest gradient norm: default {max(recipe[1]):.3g}, unclipped {max(unclipped[1]):.3g}, "
      f"clipped {max(clipped[1]):.3g}")

# %% [markdown]
# ## Summary
#
# - The loop: batch `i = loader.dataset[i]`, key `fold_in(base_key, i)`, `train_step`, check the
#   loss is finite, log. Both inputs of step `i` depend only on the seed and `i`.
# - `make_optimizer`'s learning rate warms up linearly from `0.001 · lr` and decays along half a
#   cosine to 0 at `total_steps`.
# - Log each term, the gradient norm and a validation loss (`eval_losses` on held-out images);
#   a validation loss that rises while the training loss falls is overfitting.
# - `mrcnn_jax.train.main` is that loop plus `metrics.jsonl`, `loss_curve.png` and Orbax
#   checkpoints of the model and optimizer state; `--stop_after` then `--resume` reproduces the
#   uninterrupted run.
# - Stop at the first non-finite loss (the command raises `FloatingPointError`); a growing
#   gradient norm announces a divergence; clipping and warm-up bound the steps, a lower learning
#   rate fixes the cause.
#
# ## Exercises
#
# Each exercise has a stub that raises `NotImplementedError` and a check that runs when you
# replace it. A wrong answer raises an `AssertionError` that says what was expected.
#
# ### Core exercise
#
# Here you write the stage this notebook teaches, and `mrcnn_jax.course` checks it: a hand
# example, random inputs against the package, named edge cases and a run under `jax.jit`. The
# check prints "correct", or "not attempted" while your function raises `NotImplementedError`,
# or raises an `AssertionError` that names the case, the inputs, expected and got, the largest
# error and, for a common mistake, a hint. Any correct version passes, whatever its style.
#
# **Core exercise A: the schedule, jittable.** Section 1's `my_lr` takes one Python number. In
# the train step the schedule runs under `jit` on the optimizer's step count, a traced array.
# Write `your_lr_schedule(step, lr, warmup, total)`, the learning rate of `make_optimizer` at
# step `step` (the arguments of `my_lr`), for an integer or an integer array `step` of any shape
# (the result has its shape): the same warm-up and cosine, held at 0 from step `total` on, with
# `warmup = 0` meaning no warm-up, and no Python `if` on `step`.

# %%
from mrcnn_jax.course import check_lr_schedule


def your_lr_schedule(step, lr, warmup, total):
    # BEGIN SOLUTION
    step = jnp.asarray(step, jnp.float32)
    rising = 0.001 * lr + (lr - 0.001 * lr) * step / max(warmup, 1)  # max: no 0/0 at warmup 0
    t = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)  # 0 .. 1, then held
    return jnp.where(step < warmup, rising, 0.5 * lr * (1 + jnp.cos(jnp.pi * t)))
    # END SOLUTION


check_lr_schedule(your_lr_schedule)

# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: which batch?** A run stopped after `done` steps is resumed. Write
# `resume_inputs(done, base_key)` returning `(batch_index, key)` for the first step of the
# resumed run, as `train.train` computes them.

# %%
def check_resume_inputs(fn):
    for done in (0, 7, 500):
        index, key = fn(done, base_key)
        assert index == done, f"after {done} steps the next batch is loader.dataset[{done}], got {index}"
        expected = jax.random.key_data(jax.random.fold_in(base_key, done))
        assert np.array_equal(jax.random.key_data(key), expected), f"wrong key after {done} steps"


def resume_inputs(done, base_key):
    raise NotImplementedError


try:
    check_resume_inputs(resume_inputs)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: a NaN guard for a pytree.** Write `all_finite(tree)` returning a Python bool:
# True when every array in `tree` (a dict of arrays, an `nnx.State`, ...) is finite.

# %%
def check_all_finite(fn):
    good = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}}
    assert fn(good) is True, "all values are finite"
    assert fn({**good, "d": jnp.array([1.0, jnp.inf])}) is False, "inf is not finite"
    assert fn({**good, "d": jnp.array([jnp.nan])}) is False, "NaN is not finite"
    assert fn(nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))) is True, "works on an nnx.State"


def all_finite(tree):
    raise NotImplementedError


try:
    check_all_finite(all_finite)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: early stopping.** Given the list of validation losses of a run (one per
# evaluation), write `best_evaluation(val_losses, patience)` returning the index of the
# evaluation to keep: the best so far, once `patience` evaluations in a row have failed to beat
# it (then stop looking); the best overall if that never happens.

# %%
def check_best_evaluation(fn):
    assert fn([3.0, 2.0, 1.5, 1.4], 2) == 3, "still improving: the last one"
    assert fn([3.0, 2.0, 2.1, 2.2, 1.0], 2) == 1, "two evaluations without progress after index 1: stop"
    assert fn([3.0, 2.0, 2.1, 1.9, 2.5], 2) == 3, "the patience counter restarts at a new best"
    assert fn([1.0], 1) == 0


def best_evaluation(val_losses, patience):
    raise NotImplementedError


try:
    check_best_evaluation(best_evaluation)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: scale the learning rate.** The linear scaling rule keeps `lr / batch_size`
# constant. Write `scaled_lr(batch_size, base_lr=0.02, base_batch=16)`, and the number of
# `warmup_steps` that keeps the warm-up's length in **images** the same (`base_warmup=1000`
# steps at the base batch), rounded to the nearest integer: return `(lr, warmup_steps)`.

# %%
def check_scaled_lr(fn):
    for batch, lr, warmup in ((16, 0.02, 1000), (8, 0.01, 2000), (4, 0.005, 4000), (32, 0.04, 500)):
        got = fn(batch)
        assert abs(got[0] - lr) < 1e-12 and got[1] == warmup, f"batch {batch}: expected {(lr, warmup)}, got {got}"


def scaled_lr(batch_size, base_lr=0.02, base_batch=16, base_warmup=1000):
    raise NotImplementedError


try:
    check_scaled_lr(scaled_lr)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
