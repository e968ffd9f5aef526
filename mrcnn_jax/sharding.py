"""Data parallelism over every device (and every host) with JAX's own SPMD: one mesh axis.

A ``Mesh`` over the chosen devices has one axis, ``data``. Parameters and optimizer state are
replicated (``PartitionSpec()``); every array of a batch is split on its first axis
(``PartitionSpec("data")``), so each device holds ``B / N`` images. The train step is
``training.apply_step``, the very function the single-device ``train_step`` jits, compiled
with those shardings: XLA partitions the forward and backward passes by image and inserts the
all-reduce of the gradients itself. Nothing here is a home-made parallel layer.

Why 1 and N devices agree: every loss term divides by a count summed over the *whole* global
batch (``rpn_losses``, ``box_losses``, ``mask_loss``), and under ``jit`` a ``jnp.sum`` over a
sharded axis is a global sum; per-image PRNG keys are split from the step key by image index,
not by device. So N devices compute the function one device computes on the same global
batch; only the order of floating-point additions differs.

Several hosts: after ``jax.distributed.initialize`` each process sees all devices in
``jax.devices()`` and feeds only its own slice of every global batch
(:func:`process_batch_index` picks which records; :func:`shard_batch` assembles the global
array with ``jax.make_array_from_process_local_data``).

Shape shorthand: ``B`` global batch, ``N`` devices, ``P`` processes, ``b = B / P`` images read
by one process.
Taught in notebooks/09_training.
"""

import socket
import sys
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mrcnn_jax import xla_cpu
from mrcnn_jax.training import apply_step, check_batch

DATA_AXIS = "data"


def make_mesh(num_devices=None, devices=None):
    """A 1-D ``Mesh`` with axis ``data`` over ``devices`` (default: the first ``num_devices``
    of ``jax.devices()``, or all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"--devices {num_devices}: this run sees {len(devices)} devices "
                             f"({devices[0].platform}); pick 1..{len(devices)}")
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError(f"with {jax.process_count()} processes the mesh must span all "
                             f"{len(devices)} devices; got {num_devices}")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh):
    """Sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh):
    """Sharding of batch arrays: the first (image) axis split over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size, mesh):
    """Raise unless the global batch splits evenly over the mesh (and the processes)."""
    n, p = mesh.devices.size, jax.process_count()
    if batch_size % n or batch_size % p:
        raise ValueError(f"the global batch size {batch_size} must be a multiple of the "
                         f"{n} devices (and {p} processes), so every device gets the same "
                         f"number of images; try {max(n, p) * max(1, batch_size // n)}")


def shard_batch(local_batch, mesh):
    """Assemble global arrays from this process's slice of a batch.

    Args:
      local_batch: dict of numpy arrays, each ``(b, ...)``: this process's rows of the global
        batch, in process order (``b = B`` with one process).
    Returns:
      dict of ``jax.Array`` of shape ``(B, ...)`` sharded on ``data``.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def replicate(mesh, *objects):
    """Put every variable of the NNX ``objects`` (model, optimizer) on all devices, in place."""
    sharding = replicated(mesh)
    for obj in objects:
        state = nnx.state(obj)
        nnx.update(obj, jax.tree.map(lambda x: jax.device_put(x, sharding), state))


def _constrain(mesh, *objects):
    sharding = replicated(mesh)
    for obj in objects:
        state = nnx.state(obj)
        nnx.update(obj, jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding),
                                     state))


@xla_cpu.jit(objects=2, mutable=True, static_argnums=(2, 3))
def _sharded_step(model, optimizer, batch, key, mesh, with_grads):
    out = apply_step(model, optimizer, batch, key, with_grads)
    _constrain(mesh, model, optimizer)  # updated state stays replicated, never resharded
    return jax.lax.with_sharding_constraint(out, replicated(mesh))


def train_step(model, optimizer, batch, key, mesh, with_grads=False):
    """One data-parallel optimisation step on a global ``batch`` from :func:`shard_batch`.

    ``model`` and ``optimizer`` must be replicated on ``mesh`` (:func:`replicate`). Returns the
    loss terms, ``loss`` and ``grad_norm`` of the whole global batch, replicated (and the
    gradients, for tests, if ``with_grads``).
    """
    return _sharded_step(model, optimizer, check_batch(batch), key, mesh, with_grads)


def compiled_step_text(model, optimizer, batch, key, mesh):
    """The optimised HLO of :func:`train_step` on ``mesh``, as text: what XLA runs on every
    device, the collectives it inserted included (``all-reduce``, ``all-gather``). Compiling
    here fills the same cache as calling :func:`train_step` with these shapes."""
    lowered = _sharded_step.lower(model, optimizer, check_batch(batch), key, mesh, False)
    return lowered.compile().as_text()


def add_distributed_args(p):
    """Multi-host flags (``jax.distributed.initialize``); TPU pods need none of them."""
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize (auto-detected on TPU pods and SLURM)")
    p.add_argument("--coordinator_address", default=None,
                   help="host:port of process 0 (implies --distributed)")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--initialization_timeout", type=int, default=300,
                   help="seconds to wait for every process to join")


def init_distributed(args):
    """``jax.distributed.initialize`` from the flags, once, before any device is touched."""
    if not (args.distributed or args.coordinator_address):
        return
    if jax.distributed.is_initialized():
        return
    timeout = args.initialization_timeout
    if args.coordinator_address and args.process_id:  # not the coordinator: is it there?
        _wait_for_coordinator(args.coordinator_address, timeout)
    # XLA ends the process itself (a fatal log, no Python exception) when a peer never joins
    # or dies later; this line says what it was waiting for.
    print(f"process {args.process_id} of {args.num_processes}: joining the coordinator at "
          f"{args.coordinator_address}; if a process is missing, XLA stops this one after "
          f"{timeout} s with DEADLINE_EXCEEDED", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(args.coordinator_address, args.num_processes,
                                   args.process_id,
                                   initialization_timeout=args.initialization_timeout)
    except Exception as e:  # XLA raises its own error types; say what was expected
        raise RuntimeError(
            f"jax.distributed.initialize failed: process {args.process_id} of "
            f"{args.num_processes} could not join the coordinator at "
            f"{args.coordinator_address} within {args.initialization_timeout} s (is every "
            f"process started, with the same address and --num_processes?): {e}") from e


def _wait_for_coordinator(address, timeout):
    """Raise a clear error unless ``host:port`` accepts a TCP connection within ``timeout`` s."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no coordinator at {address} after {timeout} s: start process 0 (the "
                    f"coordinator) with the same --coordinator_address ({e})") from e
            time.sleep(0.5)


def local_copy(model):
    """A copy of a replicated ``model`` on this process's default device (for pictures and
    single-device code after training on a mesh)."""
    graphdef, state = nnx.split(model)
    local = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)
    return nnx.merge(graphdef, local)


def process_batch_index(step, num_records, global_batch, process_index=None,
                        process_count=None):
    """Index into a loader of *local* batches (``b = B / P`` images) whose batch is this
    process's slice of global batch ``step``.

    ``make_loader(source, b)`` and ``make_loader(source, B)`` with the same seed shuffle and
    transform the same records in the same order (grain seeds by record position), and each
    epoch of both starts at record ``epoch * num_records``. Global batch ``s`` of epoch ``e``
    holds positions ``e * num_records + (s mod n_B) * B + [0, B)``; process ``p`` reads
    ``[p * b, (p + 1) * b)`` of them, which is local batch ``e * n_b + (s mod n_B) * P + p``.
    So a step's global batch never depends on how many processes read it.
    """
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    local = global_batch // count
    per_epoch_global, per_epoch_local = num_records // global_batch, num_records // local
    epoch, within = divmod(step, per_epoch_global)
    return epoch * per_epoch_local + within * count + p
