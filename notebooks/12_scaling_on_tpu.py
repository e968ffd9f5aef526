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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/12_scaling_on_tpu.ipynb)
#
# # 12 · Scaling out: many devices, many hosts, bfloat16
#
# *The same training step on 1 device, 8 devices or a TPU pod: a mesh, a sharded batch, and
# the all-reduce that XLA writes for us.*
#
# **You will learn**
# - devices and meshes: `jax.devices()`, a `Mesh` with one axis `data`, `NamedSharding` and
#   `PartitionSpec`, and how to read which device holds which part of an array;
# - how a global batch is laid out: image `i` of a batch of `B` on `N` devices lives on device
#   `i // (B / N)`, while every parameter has a full copy on every device;
# - that one jitted step on 8 devices computes what it computes on 1 device, and why
#   (losses normalised over the *global* batch);
# - where the communication is: the **all-reduce** of the gradients that the compiler inserts
#   into the step, found in the compiled HLO text;
# - what forced CPU devices can and cannot show about throughput;
# - bfloat16 compute against float32 (the step-0 loss difference);
# - tiled NMS against greedy NMS (loop iterations), and the multi-host recipe.
#
# This notebook runs on whatever JAX finds: a TPU VM's 4-8 chips, the GPUs of a machine, or, on
# a plain CPU, **8 simulated CPU devices** (section 0). Everything below works for any device
# count; the printed figures come from the run that was saved (a 2-core CPU).

# %% [markdown]
# ## 0. Eight devices on a CPU
#
# XLA can split the host CPU into several "devices" with the flag
# `--xla_force_host_platform_device_count=8`. JAX reads `XLA_FLAGS` **once, when it first starts
# its CPU backend** (the first `jax.devices()` or the first array), and the device count is
# fixed from then on. So the cell below (after the Colab setup cell) must run before anything
# touches a device: importing `jax` is harmless, creating an array is not. On a TPU or GPU we
# leave the flag alone: the accelerator's devices are the ones we want (the flag would only add
# unused CPU devices).
# `detect_accelerator` reads the runtime without starting JAX (environment variables,
# `/dev/accel0`, `nvidia-smi`).
#
# If you run this notebook on a Colab *CPU* runtime, the Colab setup cell has already started
# JAX with one device: restart the session and run from the cell below (the install is kept). With
# one device every section still runs; the pictures are just less interesting.

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
import os

from mrcnn_jax.colab import detect_accelerator

ACCELERATOR = detect_accelerator()
FLAG = "--xla_force_host_platform_device_count=8"
if ACCELERATOR == "cpu" and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip()
print(f"accelerator: {ACCELERATOR}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

# %%
import logging
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mrcnn_jax import nms, nms_tiled, plotting, sharding
from mrcnn_jax.config import small_config
from mrcnn_jax.data import make_loader, shapes_source
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.training import LOSS_TERMS, make_optimizer

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls in bfloat16 or TF32 passes by default; section 6
# compares float32 with bfloat16, so float32 must mean float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
tfds.display_progress_bar(False)  # preparing the shapes data prints no bars
IMAGE, BATCH, TIMED_STEPS = (64, 8, 2) if FAST else (128, 8, 5)
print(f"FAST={FAST}: small_config at {IMAGE}x{IMAGE}, global batch {BATCH}, "
      f"{TIMED_STEPS} timed steps per mesh")

# %% [markdown]
# ## 1. Devices and meshes
#
# `jax.devices()` lists every device of every process (one process here); `jax.local_devices()`
# the ones this process drives. A **mesh** arranges devices in a named grid. Data parallelism
# needs one axis, which this project calls `data` (`sharding.make_mesh`).

# %%
devices = jax.devices()
N = len(devices)
print(f"{N} {devices[0].platform} device(s) in {jax.process_count()} process(es):", devices)
mesh = sharding.make_mesh()  # every visible device on one axis named "data"
print(mesh)
print("axis names:", mesh.axis_names, " shape:", dict(mesh.shape))
assert mesh.axis_names == ("data",) and mesh.devices.size == N

# %% [markdown]
# A `NamedSharding(mesh, PartitionSpec(...))` says how an array is cut over the mesh: one entry
# per array axis, naming the mesh axis that axis is split over, or `None` (not split).
# `PartitionSpec("data")` splits the first axis (images) over `data`; `PartitionSpec()` splits
# nothing: every device holds a full copy (*replicated*). `jax.device_put` places an array, and
# `.addressable_shards` tells which device holds which slice. A hand-checkable case: 8 rows on
# `N` devices, each device gets `8 / N` consecutive rows.

# %%
rows = np.arange(16, dtype=np.float32).reshape(8, 2)
split = jax.device_put(rows, NamedSharding(mesh, PartitionSpec("data")))
copied = jax.device_put(rows, NamedSharding(mesh, PartitionSpec()))
for shard in split.addressable_shards[:3]:
    print(f"split : {shard.device} holds rows {shard.index[0]} -> {np.asarray(shard.data).tolist()}")
print(f"copied: every device holds shape {copied.addressable_shards[0].data.shape}")
per_device = 8 // N
for k, shard in enumerate(split.addressable_shards):
    np.testing.assert_array_equal(np.asarray(shard.data), rows[k * per_device:(k + 1) * per_device])
assert all(s.data.shape == (8, 2) for s in copied.addressable_shards)

# %% [markdown]
# Operations on sharded arrays stay sharded when they can, and JAX inserts the communication
# when they cannot: a sum over the split axis needs every device's partial sum.

# %%
print("sum over the split axis:", float(jnp.sum(split)), "= 0 + 1 + ... + 15 =", sum(range(16)))
print("2 * split keeps its sharding:", (2 * split).sharding.spec)
assert float(jnp.sum(split)) == 120.0

# %% [markdown]
# ## 2. How a global batch is laid out per device
#
# `--batch_size` is the **global** batch `B`: what one optimisation step sees, whatever the
# device count. `sharding.shard_batch` turns the numpy batch into global `jax.Array`s split on
# `data` (with `jax.make_array_from_process_local_data`, which also works when each process
# holds only its own rows, section 7). With `N` devices each gets `B / N` consecutive images.
# The same batch of 8 shapes images on meshes of 8, 4, 2 and 1 devices:

# %%
train_source = shapes_source("train", num_train=64, num_val=16, image_size=IMAGE, seed=0)
loader = make_loader(train_source, BATCH, image_size=IMAGE, max_instances=6, seed=0,
                     num_epochs=None)
batch = loader.dataset[0]
print({k: v.shape for k, v in batch.items() if k in ("images", "boxes", "masks", "valid")})


def device_of_each_image(global_images):
    """For a sharded ``(B, ...)`` array: the mesh position of the device holding each image."""
    owner = np.full(global_images.shape[0], -1)
    order = {d: k for k, d in enumerate(global_images.sharding.mesh.devices.ravel())}
    for shard in global_images.addressable_shards:
        owner[shard.index[0]] = order[shard.device]
    return owner


mesh_sizes = [n for n in (8, 4, 2, 1) if n <= N]
layouts = {n: device_of_each_image(sharding.shard_batch(batch, sharding.make_mesh(n))["images"])
           for n in mesh_sizes}
for n, owner in layouts.items():
    print(f"{n} device(s): image -> device {owner.tolist()}")
    np.testing.assert_array_equal(owner, np.arange(BATCH) // (BATCH // n))

# %%
fig, axes = plotting.subplots(BATCH, len(mesh_sizes), size=1.3)
for row, n in enumerate(mesh_sizes):
    for i in range(BATCH):
        ax = axes[row * BATCH + i]
        device = layouts[n][i]
        plotting.show_image(ax, batch["images"][i])
        ax.set_title(f"img {i} · dev {device}", fontsize=7, color=plotting.colour(device))
        for spine in ax.spines.values():
            spine.set_edgecolor(plotting.colour(device))
            spine.set_linewidth(3)
    axes[row * BATCH].set_ylabel(f"{n} device(s)", fontsize=8)
fig.suptitle("one global batch of 8 images: frame colour = the device that holds the image",
             fontsize=9)
fig.tight_layout()

# %% [markdown]
# Parameters and optimizer state are **replicated**: `sharding.replicate(mesh, model, optimizer)`
# puts a full copy of every variable on every device. Each device then runs the forward and
# backward pass on its own images with its own copy of the weights.

# %%
config = small_config(image_size=(IMAGE, IMAGE))
model = MaskRCNN(config, rngs=nnx.Rngs(0))
optimizer = make_optimizer(model, 0.02, warmup_steps=10, total_steps=100)
sharding.replicate(mesh, model, optimizer)
params = jax.tree.leaves(nnx.state(model, nnx.Param))
n_params = sum(p.size for p in params)
initial_params = [np.asarray(p) for p in params]  # a copy: the train step donates the state
print(f"{len(params)} parameter tensors, {n_params:,} numbers, on "
      f"{len(params[0].sharding.device_set)} device(s) each, spec {params[0].sharding.spec}")
assert all(p.sharding.is_fully_replicated for p in params)

# %% [markdown]
# ## 3. One step on N devices is one step on 1 device
#
# `sharding.train_step(model, optimizer, batch, key, mesh)` is the very function that the
# single-device `train_step` jits (`training.apply_step`), compiled with these shardings. Why
# both compute the same thing: every loss term divides by a count summed over the **whole**
# global batch (positive anchors, sampled RoIs, mask pixels), and under `jit` a `jnp.sum` over a
# sharded axis is a global sum. Per-image random keys come from the image index, not from the
# device. So the only difference is the order of floating-point additions.
#
# We run step 0 on the full mesh and on a 1-device mesh, from the same initial weights.

# %%
key = jax.random.key(0)


def fresh(mesh, dtype="float32"):
    """Model and optimizer from seed 0 (same initial weights for every call), on ``mesh``."""
    m = MaskRCNN(config.replace(dtype=dtype), rngs=nnx.Rngs(0))
    o = make_optimizer(m, 0.02, warmup_steps=10, total_steps=100)
    sharding.replicate(mesh, m, o)
    return m, o


def step(state, mesh, i):
    terms = sharding.train_step(*state, sharding.shard_batch(batch, mesh),
                                jax.random.fold_in(key, i), mesh)
    return {k: float(v) for k, v in terms.items()}


one_mesh = sharding.make_mesh(1)
states = {N: (model, optimizer), 1: fresh(one_mesh) if N > 1 else (model, optimizer)}
began = time.perf_counter()
terms_n = step(states[N], mesh, 0)
print(f"{N} device(s): compiled and ran step 0 in {time.perf_counter() - began:.1f} s")
began = time.perf_counter()
terms_1 = terms_n if N == 1 else step(states[1], one_mesh, 0)
print(f"1 device : compiled and ran step 0 in {time.perf_counter() - began:.1f} s")
print(f"{'term':18s} {'1 device':>12s} {f'{N} devices':>12s}  relative difference")
for name in ("loss", *LOSS_TERMS):
    a, b = terms_1[name], terms_n[name]
    print(f"{name:18s} {a:12.6f} {b:12.6f}  {abs(b - a) / max(abs(a), 1e-12):.1e}")
np.testing.assert_allclose(terms_n["loss"], terms_1["loss"], rtol=1e-3)

# %% [markdown]
# The terms agree to float32 rounding, about 1e-7 relative here. A tolerance stays necessary:
# a device holding one image sums its convolutions in another order than a device holding
# eight. At initialisation the RPN's scores lie within ~1e-4 of each other, so such rounding can
# swap two proposals and the RoI sampler can then pick a different RoI; on other batches the box
# terms then move by up to ~1% (`benchmarks/README.md`, "Scaling"). `tests/test_sharding.py`
# removes that choice and checks gradients to ~1e-5 and parameters after 5 steps.

# %% [markdown]
# ## 4. The all-reduce the compiler inserts
#
# Nowhere did we write "average the gradients over devices". XLA's SPMD partitioner sees a
# replicated result (the new parameters) computed from a sharded input (the batch) and inserts
# the communication itself. First a function small enough to read whole: the gradient of a
# mean squared error, `w` replicated, `x` and `y` split over `data`.

# %%
def mse_grad(w, x, y):
    return jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)


x = jax.device_put(np.ones((8, 3), np.float32), NamedSharding(mesh, PartitionSpec("data")))
y = jax.device_put(np.zeros(8, np.float32), NamedSharding(mesh, PartitionSpec("data")))
w = jax.device_put(np.ones(3, np.float32), NamedSharding(mesh, PartitionSpec()))
hlo = jax.jit(mse_grad).lower(w, x, y).compile().as_text()
collectives = [line.strip() for line in hlo.splitlines() if re.search(r" all-reduce\(", line)]
for line in collectives:
    print(line[:160])
print("gradient:", np.asarray(mse_grad(w, x, y)), "(by hand: 2 * mean(x @ w - y) * 1 = 6)")
np.testing.assert_allclose(np.asarray(mse_grad(w, x, y)), [6, 6, 6])
assert N == 1 or collectives, "with several devices the gradient needs an all-reduce"

# %% [markdown]
# Each device computes the gradient of its own rows, and one `all-reduce` (a sum over the
# `replica_groups`, the devices of the mesh) makes every device hold the total. Now the real
# training step. `sharding.compiled_step_text` returns the HLO that XLA runs on every device
# (compiling here fills the cache that `train_step` uses). We list every collective operation:
# its kind, what it carries, and the JAX operation it came from (`op_name` in the metadata).

# %%
step_hlo = sharding.compiled_step_text(model, optimizer, sharding.shard_batch(batch, mesh),
                                       key, mesh)
COLLECTIVE = re.compile(r"= (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute)(-start)?\(")


def collectives_of(text):
    """(kind, result type, number of tensors, numbers carried, op_name) of each collective."""
    found = []
    for line in text.splitlines():
        match = COLLECTIVE.search(line)
        if not match:
            continue
        result = match.group(1)
        sizes = [int(np.prod([int(d) for d in dims.split(",")])) if dims else 1
                 for dims in re.findall(r"[a-z0-9]+\[([0-9,]*)\]", result)]
        op = re.search(r'op_name="([^"]*)"', line)
        found.append((match.group(2), result, len(sizes), sum(sizes), op.group(1) if op else ""))
    return found


found = collectives_of(step_hlo)
for kind, result, tensors, numbers, op in found:
    shown = result if len(result) < 40 else result[:37] + "..."
    print(f"{kind:11s} {tensors:3d} tensor(s) {numbers:9,d} numbers  {shown:40s} from {op[:60]}")
gradient_reduce = max((f for f in found if f[0] == "all-reduce"), key=lambda f: f[3],
                      default=None)
rpn_head_params = sum(p.size for p in jax.tree.leaves(nnx.state(model.rpn_head, nnx.Param)))
levels = len(config.rpn.anchor_sizes)  # the RPN head runs once per FPN level
if N > 1:
    extra = gradient_reduce[3] - n_params
    print(f"\nthe largest all-reduce carries {gradient_reduce[2]} tensors, "
          f"{gradient_reduce[3]:,} numbers; the model has {len(params)} parameter tensors, "
          f"{n_params:,} numbers")
    print(f"{extra:,} numbers more = {levels - 1} x the RPN head's {rpn_head_params:,} "
          f"parameters ({(levels - 1) * rpn_head_params:,}) + {extra - (levels - 1) * rpn_head_params}")
    assert gradient_reduce[3] >= n_params  # every gradient is summed over the devices

# %% [markdown]
# What the list says (8 CPU devices, the saved run):
# - **one big all-reduce of the gradients**: a single tuple carrying every parameter's
#   gradient at once (XLA's all-reduce combiner merged the per-tensor sums into one
#   operation). This is data parallelism's one essential communication: each device's gradient
#   of its images, summed. It carries a little more than the model's parameters: the RPN head
#   is applied to each of the 5 FPN levels, and XLA sums each level's gradient over the devices
#   separately before adding the levels, so the RPN head's gradient travels 5 times (4 extra
#   copies, the difference printed above; a few scalars come along).
# - a small all-reduce of integer counts (`reduce_sum`): the global normalisers of the losses
#   (positive anchors, sampled RoIs) that make 1 and N devices agree;
# - an all-reduce of one boolean inside a `while` loop: NMS is vmapped over images, and a
#   vmapped `while_loop` runs until *every* image is done, so the devices agree on "anyone
#   still going?" once per iteration;
# - all-gathers of per-image **score vectors** (`top_k`: thousands of numbers, not feature
#   maps): XLA does not partition `lax.top_k` over the batch axis, so it gathers the `(B, A)`
#   score matrix and selects on every device. They are small; the feature maps are never gathered (`tests/test_sharding.py` checks that every
#   all-gather is far smaller than one image's FPN maps).
#
# On a TPU pod the big all-reduce runs over the chips' interconnect while the backward pass of
# later layers is still running (XLA overlaps them); it costs one model's worth of gradients per
# step, whatever the batch.

# %% [markdown]
# ## 5. Throughput against device count
#
# Images per second of the training step for meshes of 1, 2, 4, 8 devices (1 and 8 in the fast
# setting), the same global batch of 8, compile excluded (one warm-up step per mesh), median of
# a few timed steps.
#
# **What forced CPU devices can and cannot show.** The 8 "devices" are slices of the same CPU
# cores (this machine has the number printed below), so the total compute is fixed. Up to the
# number of cores, images/s can rise a little: one CPU device does not keep every core busy
# (XLA parallelises inside large operations only), while several devices run side by side.
# Beyond it, images/s can only stay flat or fall: each device runs smaller convolutions (less
# efficient), and the collectives add work. What they *do* show: the same step runs
# partitioned over N devices with the communication above. On real chips each device brings
# its own compute and memory bandwidth, and the ideal is the dashed line (N times one device's
# images/s), approached when the per-device batch is large enough to hide the all-reduce.

# %%
def images_per_second(state, mesh, steps):
    sharded = sharding.shard_batch(batch, mesh)
    times = []
    for i in range(steps + 1):  # step 0 compiles (or reuses the compiled step)
        start = time.perf_counter()
        out = sharding.train_step(*state, sharded, jax.random.fold_in(key, 100 + i), mesh)
        jax.block_until_ready(out)
        if i:
            times.append(time.perf_counter() - start)
    return BATCH / float(np.median(times))


throughput_sizes = [n for n in ((1, 8) if FAST else (1, 2, 4, 8)) if n <= N]
throughput = {}
for n in throughput_sizes:
    m = sharding.make_mesh(n)
    state = states[n] if n in states else fresh(m)
    throughput[n] = images_per_second(state, m, TIMED_STEPS)
    print(f"{n} device(s): {throughput[n]:5.1f} images/s   "
          f"({BATCH // n} image(s) per device per step)")
print(f"CPU cores this process may use: {len(os.sched_getaffinity(0))}; "
      f"backend: {jax.default_backend()}")

# %%
fig, (ax,) = plotting.subplots(1, size=4.2)
sizes = np.array(throughput_sizes)
ax.plot(sizes, [throughput[n] for n in sizes], "o-", color=plotting.colour(0),
        label=f"measured ({jax.default_backend()})")
ax.plot(sizes, throughput[sizes[0]] * sizes / sizes[0], "--", color="grey",
        label="ideal: each device its own chip")
ax.set_xscale("log", base=2)
ax.set_xticks(sizes, [str(n) for n in sizes])
ax.set_xlabel("devices in the mesh")
ax.set_ylabel("training images / s (global batch 8)")
ax.set_ylim(0, None)
ax.legend(fontsize=8)
ax.set_title("throughput against device count", fontsize=10)
fig.tight_layout()

# %% [markdown]
# In the saved run (2 cores, shared with other jobs, so each figure is noisy) 2 devices did
# better than 1, the second core being busier, and 4 and 8 devices fell back below 1 device:
# far below the ideal line, which only real devices can follow. `benchmarks/bench_scaling.py` measures the same
# thing with one process per device count and the larger `shapes_config`; on a GPU or TPU host
# run it with `--platform gpu` or `tpu`.

# %% [markdown]
# ## 6. bfloat16 against float32
#
# `config.replace(dtype="bfloat16")` (the command's `--dtype bfloat16`) runs convolutions and
# matmuls in bfloat16: 8 bits of mantissa instead of 23, half the memory traffic, and the fast
# path of TPU matrix units and GPU tensor cores. Parameters, GroupNorm statistics, losses, box
# decoding, RoIAlign coordinates, IoU and NMS stay float32, so small numeric differences do not
# turn into wrong boxes. The parameters are identical (same seed); only the compute differs.
# Step 0 on one device in each dtype:

# %%
bf16_state = fresh(one_mesh, "bfloat16")
same_init = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
    jax.tree.leaves(nnx.state(bf16_state[0], nnx.Param)), initial_params, strict=True))
print("same initial parameters:", same_init)
terms_bf16 = step(bf16_state, one_mesh, 0)
print(f"{'term':18s} {'float32':>10s} {'bfloat16':>10s}  relative difference")
relative = {}
for name in ("loss", *LOSS_TERMS):
    a, b = terms_1[name], terms_bf16[name]
    relative[name] = (b - a) / abs(a)
    print(f"{name:18s} {a:10.5f} {b:10.5f}  {relative[name]:+.2%}")
assert same_init and np.isfinite(terms_bf16["loss"])
assert abs(relative["loss"]) < 0.05  # recorded: well under 1 % here

# %%
fig, (ax,) = plotting.subplots(1, size=4.2)
names = ["loss", *LOSS_TERMS]
ax.barh(names, [100 * relative[k] for k in names],
        color=[plotting.colour(i) for i in range(len(names))])
ax.axvline(0, color="black", linewidth=0.8)
ax.invert_yaxis()
ax.set_xlabel("bfloat16 - float32, % of float32 (step 0)")
ax.set_title("same weights, same batch: bfloat16 compute", fontsize=10)
fig.tight_layout()

# %% [markdown]
# The loss moves by 0.04% and no term by more than 0.4% (the box classifier): the rounding of
# an 8-bit mantissa through a few dozen layers. On other inputs a term can move by a few percent
# (box regression by 3% in the fast setting's 64x64 run), because the RoI sampler picks other
# RoIs when the RPN's nearly tied scores shift. Over a training run that does not matter: a 400-step shapes run reached box AP
# 0.709 (float32) and 0.721 (bfloat16), mask AP 0.658 and 0.679 (`benchmarks/README.md`, one
# seed each). On a CPU without bf16 matrix units bfloat16 is emulated and *slower*; its speed-up
# needs a GPU or TPU.

# %% [markdown]
# ## 7. NMS for accelerators: tiled against greedy
#
# Greedy NMS (notebook 03) runs one `while_loop` iteration per **kept** box: 1,000 sequential
# iterations for the RPN's 1,000 proposals. On a CPU an iteration is cheap; on a GPU or TPU each
# is a round trip with little vector work, so the loop serialises the whole step. `nms_tiled`
# cuts the score-sorted boxes into tiles of `T`: each tile is first suppressed by every box
# already kept (one `(T, kept)` IoU block), then by itself, repeating a `(T, T)` pass until
# nothing changes. It keeps **exactly** greedy's set, in a few iterations per tile. The configs'
# `nms_algorithm="auto"` picks greedy on CPU and tiled elsewhere.

# %%
rng = np.random.default_rng(0)
count, keep_at_most = (1000, 300) if FAST else (2000, 1000)
xy = rng.uniform(0, (1088, 800), (count, 2))
boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(5, 60, (count, 2))], 1), jnp.float32)
scores = jnp.asarray(rng.uniform(size=count), jnp.float32)
greedy_idx, greedy_valid = jax.jit(nms, static_argnums=(2, 3))(boxes, scores, 0.7, keep_at_most)
print(f"{count} random boxes, IoU 0.7, keep at most {keep_at_most}")
print(f"greedy: {int(greedy_valid.sum())} kept, {int(greedy_valid.sum())} loop iterations "
      f"(one per kept box)")
iterations = {"greedy": int(greedy_valid.sum())}
for tile in (64, 256):
    idx, valid, its = jax.jit(nms_tiled, static_argnums=(2, 3), static_argnames=(
        "tile_size", "return_iterations"))(boxes, scores, 0.7, keep_at_most, tile_size=tile,
                                           return_iterations=True)
    same = bool(np.array_equal(np.asarray(idx)[np.asarray(valid)],
                               np.asarray(greedy_idx)[np.asarray(greedy_valid)]))
    iterations[f"tiled T={tile}"] = int(its)
    print(f"tiled T={tile:3d}: {int(valid.sum())} kept, {int(its):4d} loop iterations, "
          f"same indices as greedy: {same}")
    assert same

# %%
fig, (ax,) = plotting.subplots(1, size=4.0)
ax.bar(list(iterations), list(iterations.values()),
       color=[plotting.colour(i) for i in range(len(iterations))])
ax.set_yscale("log")
ax.set_ylabel("while-loop iterations (log)")
ax.set_title(f"NMS of {count} boxes: the same kept set", fontsize=10)
fig.tight_layout()

# %% [markdown]
# Tiled NMS needs one to two orders of magnitude fewer sequential iterations for the same
# answer. It does more arithmetic (IoU blocks greedy never computes), which is why a CPU
# prefers greedy: `benchmarks/bench_nms.py` times both (greedy 9 ms against tiled 12 ms for
# 2,000 proposals on the project's CPU).

# %% [markdown]
# ## 8. Several hosts
#
# A TPU pod slice or several GPU machines run **one process per host**; each process drives
# its local devices, and `jax.distributed.initialize` connects them, after which
# `jax.devices()` lists the devices of every host and one mesh spans them all. The code above
# does not change. Two things do:
# - each process feeds only **its slice** of every global batch:
#   `sharding.shard_batch` calls `jax.make_array_from_process_local_data`, which assembles the
#   global array from each process's rows without copying them anywhere;
# - which rows: `sharding.process_batch_index(step, num_records, B, p, P)` is the index of the
#   local batch (`B / P` images) that process `p` reads for global step `step`. Global batch `s`
#   is the same records for any number of processes, so a run can be resumed on another
#   cluster size. By hand, 64 records, `B = 8`: global step 3 holds records 24-31; with `P = 2`
#   process 0 reads local batch `3 * 2 + 0 = 6` (records 24-27) and process 1 local batch 7.

# %%
for processes in (1, 2, 4):
    picks = [sharding.process_batch_index(3, 64, 8, p, processes) for p in range(processes)]
    local = 8 // processes
    records = [f"{i * local}-{i * local + local - 1}" for i in picks]
    print(f"P={processes}: global step 3 -> local batches {picks} = records {records}")
assert [sharding.process_batch_index(3, 64, 8, p, 2) for p in range(2)] == [6, 7]

# %% [markdown]
# The commands (not run here; `tests/test_train_cli.py` and `tests/test_multihost_resume.py`
# run two processes on localhost with gloo CPU collectives, including stop and exact resume):
#
# ```bash
# # one machine, every visible GPU or TPU chip; --devices N uses the first N
# python -m mrcnn_jax.train --batch_size 32 --dtype bfloat16 --workdir outputs/big
#
# # a TPU pod slice: the same command on every host; jax.distributed finds the others itself
# gcloud compute tpus tpu-vm ssh NAME --worker=all --command \
#   "cd mrcnn_jax && .venv/bin/python -m mrcnn_jax.train --distributed --batch_size 256 \
#    --dtype bfloat16 --workdir /shared/run"
#
# # GPUs on two hosts: name process 0's host as the coordinator on both
# python -m mrcnn_jax.train --coordinator_address host0:1234 --num_processes 2 --process_id 0 ...
# python -m mrcnn_jax.train --coordinator_address host0:1234 --num_processes 2 --process_id 1 ...
#
# # two processes on one CPU machine, to try it (gloo collectives, one CPU device each)
# JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo python -m mrcnn_jax.train \
#   --steps 4 --coordinator_address localhost:1234 --num_processes 2 --process_id 0 --workdir w &
# JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo python -m mrcnn_jax.train \
#   --steps 4 --coordinator_address localhost:1234 --num_processes 2 --process_id 1 --workdir w
# ```
#
# The work directory must be one that every host sees (NFS, a GCS FUSE mount): Orbax writes
# each checkpoint from all processes together, and `--resume` continues exactly. Logging, the
# progress bar and the plots come from process 0. `--batch_size` is global and must be a
# multiple of the device count; with a larger global batch raise `--lr` (linear scaling with a
# longer `--warmup` is the usual start).

# %% [markdown]
# ## Summary
#
# - A `Mesh` with one axis `data`; the batch is `NamedSharding(mesh, PartitionSpec("data"))`
#   (image `i` on device `i // (B / N)`), parameters and optimizer state `PartitionSpec()`
#   (a copy everywhere).
# - The step is one `jit`; XLA inserts the communication: one all-reduce of every gradient,
#   small all-reduces of the loss normalisers, NMS's loop condition, and small all-gathers of
#   score vectors. Feature maps stay on their device.
# - Losses normalised over the global batch make N devices compute what 1 device computes, up
#   to the order of float32 additions.
# - Forced CPU devices show correctness and the communication pattern, not speed-up.
# - bfloat16 compute changes the step-0 loss by well under a percent here and trains as well;
#   it is fast on TPUs and GPUs, not on CPUs.
# - Tiled NMS keeps greedy's boxes in far fewer sequential iterations.
# - Several hosts: `jax.distributed`, each process reads its slice of every global batch, the
#   same global batch for any process count.

# %% [markdown]
# ## Exercises
#
# **Exercise 1: who holds image `i`?** Write `my_device_of_image(i, batch_size, num_devices)`
# returning the mesh position of the device that holds image `i` of a global batch sharded on
# `data`, and check it against the real layout.

# %%
def check_device_of_image(fn):
    for n in mesh_sizes:
        owner = device_of_each_image(sharding.shard_batch(batch, sharding.make_mesh(n))["images"])
        for i in range(BATCH):
            assert fn(i, BATCH, n) == owner[i], f"image {i} on {n} devices lives on {owner[i]}"


def my_device_of_image(i, batch_size, num_devices):
    raise NotImplementedError


try:
    check_device_of_image(my_device_of_image)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: an all-reduce of your own.** `jax.lax.psum` is the all-reduce as a function
# you can call inside `jax.shard_map`, where each device sees only its own block. Write
# `my_global_mean(x)` for a `(B,)` array sharded on `data` that computes the mean over all `B`
# values with `shard_map`: a local sum and a local count per device, then `psum` of both.
# Compare with `jnp.mean`.

# %%
def check_global_mean(fn):
    values = jax.device_put(np.arange(1, 9, dtype=np.float32) ** 2,
                            NamedSharding(mesh, PartitionSpec("data")))
    got = float(fn(values))
    assert abs(got - 25.5) < 1e-5, f"mean of 1, 4, ..., 64 is 25.5, got {got}"


def my_global_mean(x):
    raise NotImplementedError


try:
    check_global_mean(my_global_mean)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3 (discussion).** On 8 real GPUs, each step of this notebook's small model on a
# batch of 8 would give each GPU one 64x64 image. Why would images/s then be far below 8 times
# one GPU's? What would you change (`--batch_size`, image size, `--dtype`) to get closer to the
# dashed line of section 5, and what must change with the batch size (section 8)?
