"""Checkpoints: Orbax saves of the model and optimizer state, atomic and resumable.

A work directory holds ``run.json`` (the config and data settings of the run, so a checkpoint
can be rebuilt without the command line) and ``checkpoints/<step>/``. Orbax writes each step
into a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoint intact. Resuming restores parameters, optimizer moments and the step; the
data order and PRNG keys are functions of the step, so a resumed run continues the same run.
"""

import dataclasses
import json
import pathlib

import orbax.checkpoint as ocp
from flax import nnx

from mrcnn_jax import config as config_module
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.training import make_optimizer


def config_to_dict(config):
    return dataclasses.asdict(config)


def config_from_dict(values):
    """Rebuild a ``MaskRCNNConfig`` (nested dataclasses, tuples restored from JSON lists)."""

    def tuples(v):
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    def build(cls, d):
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name not in d:  # a field added after the run was saved: its default
                continue
            value = d[field.name]
            if dataclasses.is_dataclass(field.default):
                value = build(type(field.default), value)
            kwargs[field.name] = tuples(value)
        return cls(**kwargs)

    return build(config_module.MaskRCNNConfig, values)


def manager(workdir, max_to_keep=2):
    path = pathlib.Path(workdir).resolve() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(path, options=options)


def save(mngr, step, model, optimizer):
    state = {"model": nnx.state(model).to_pure_dict(),
             "optimizer": nnx.state(optimizer).to_pure_dict()}
    mngr.save(step, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()


def restore(mngr, model, optimizer, step=None):
    """Load a checkpoint into ``model`` and ``optimizer`` in place; returns its step."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    target = {"model": nnx.state(model).to_pure_dict(),
              "optimizer": nnx.state(optimizer).to_pure_dict()}
    restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
    for obj, key in ((model, "model"), (optimizer, "optimizer")):
        state = nnx.state(obj)
        nnx.replace_by_pure_dict(state, restored[key])
        nnx.update(obj, state)
    return step


def write_run(workdir, run):
    path = pathlib.Path(workdir) / "run.json"
    path.write_text(json.dumps(run, indent=1))


def read_run(workdir):
    path = pathlib.Path(workdir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} a training work directory?")
    return json.loads(path.read_text())


def restore_model(workdir, step=None):
    """The model of a work directory at ``step`` (latest by default), and its ``run.json``."""
    run = read_run(workdir)
    model = MaskRCNN(config_from_dict(run["config"]), rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model)  # the checkpoint holds both; only the model is returned
    restore(manager(workdir), model, optimizer, step=step)
    return model, run
