"""The learning-rate schedule, and fitting its length to a wall-clock budget.

``warmup_cosine(count, peak, warmup, total)`` is optax's ``warmup_cosine_decay_schedule`` with
``init = 0.001 * peak`` and end value 0: a linear rise over ``warmup`` steps, then half a cosine
down to 0 at step ``total``. ``scale_by_warmup_cosine`` applies it as the last link of the SGD
chain (``training.make_optimizer``) and keeps ``total`` in the optimizer **state**, not in the
compiled program, so the training loop can change the schedule's length between two steps
without a recompilation: :func:`set_total_steps`.

Why: with ``--minutes M`` the job must stop when time runs out. A schedule fixed at ``--steps``
would then stop a slower machine (half the speed: half the steps) with the learning rate still
high, and a much worse model. ``fit_total_steps`` instead measures the step time after
compilation and sets the length so the decay ends inside the budget (``train.py``).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

UNBOUNDED = 2**31 - 1  # "no decay": the cosine never starts to fall within any real run


class WarmupCosineState(NamedTuple):
    count: jax.Array  # int32: updates applied so far
    total_steps: jax.Array  # int32: where the cosine reaches 0 (changeable between steps)


def warmup_cosine(count, peak, warmup, total):
    """Learning rate of step ``count`` (arrays or numbers): linear from ``0.001 * peak`` to
    ``peak`` over ``warmup`` steps, then ``peak * (1 + cos(pi * t)) / 2`` with ``t`` going from 0
    at ``warmup`` to 1 at ``total`` (held at 0 after). ``warmup <= 0``: no warm-up."""
    count = jnp.asarray(count, jnp.float32)
    total = jnp.asarray(total, jnp.float32)
    start = peak * 0.001
    rising = start + (peak - start) * count / max(warmup, 1)
    span = jnp.maximum(total - warmup, 1.0)
    t = jnp.clip((count - warmup) / span, 0.0, 1.0)
    falling = 0.5 * peak * (1.0 + jnp.cos(math.pi * t))
    return jnp.where(count < warmup, rising, falling)


def scale_by_warmup_cosine(peak, warmup, total_steps=None):
    """optax transformation: ``updates * -warmup_cosine(count, ...)``; ``total_steps`` (None:
    unbounded) starts in the state and may be replaced later by :func:`set_total_steps`."""
    total = UNBOUNDED if total_steps is None else max(int(total_steps), int(warmup) + 1)

    def init(params):
        del params
        return WarmupCosineState(jnp.zeros([], jnp.int32), jnp.asarray(total, jnp.int32))

    def update(updates, state, params=None):
        del params
        lr = warmup_cosine(state.count, peak, warmup, state.total_steps)
        updates = jax.tree.map(lambda g: (-lr * g).astype(g.dtype), updates)
        return updates, WarmupCosineState(state.count + 1, state.total_steps)

    return optax.GradientTransformation(init, update)


def _schedule_leaves(optimizer):
    """The ``total_steps`` variables of every ``WarmupCosineState`` in the optimizer."""
    found = []

    def visit(node):
        if isinstance(node, WarmupCosineState):
            found.append(node)
        elif isinstance(node, tuple | list):
            for child in node:
                visit(child)

    visit(optimizer.opt_state)
    return found


def total_steps(optimizer):
    """The schedule's current length (steps until the learning rate reaches 0)."""
    (state,) = _schedule_leaves(optimizer)
    value = state.total_steps
    return int(value.get_value() if hasattr(value, "get_value") else value)


def set_total_steps(optimizer, total):
    """Set the schedule's length in place; the jitted step is not retraced (a state value).

    The new value keeps the old one's sharding, so a replicated optimizer stays replicated.
    """
    (state,) = _schedule_leaves(optimizer)
    variable = state.total_steps  # an nnx OptArray variable
    old = variable.get_value()
    new = jnp.asarray(int(total), jnp.int32)
    if isinstance(old, jax.Array):
        new = jax.device_put(new, old.sharding)
    variable.set_value(new)


def fit_total_steps(done, step_seconds, seconds_left, *, warmup, reserve=0.03, at_most=None):
    """How many steps the schedule should span so that it ends inside the budget.

    Args:
      done: steps already taken.
      step_seconds: measured time of one step (after compilation), including the loop's host
        work (data, logging, periodic validation spread over its steps).
      seconds_left: budget left now.
      warmup: the warm-up length; the schedule never ends before ``warmup + 1``.
      reserve: fraction of the remaining time kept free for checkpoints and variation.
      at_most: an upper bound (``--steps`` when given).
    """
    if step_seconds <= 0:
        raise ValueError(f"step time must be positive, got {step_seconds}")
    more = int(max(seconds_left, 0.0) * (1.0 - reserve) / step_seconds)
    total = max(done + more, done + 1, warmup + 1)
    return total if at_most is None else min(total, at_most)



class BudgetFit:
    """Fits the schedule's length to ``minutes`` of training as the run goes.

    The first step compiles and is left out; the step time is the wall time per step since the
    end of that first step (so data loading, logging and the periodic validation are counted).
    ``update(step_done, now)`` returns a new length at steps 10, 25, 50, 100 and 200 after
    compilation and every 200 steps after that, else ``None``; each length is
    ``fit_total_steps`` of the budget left. Until the warm-up ends the length does not change
    the learning rate at all, so the early fits are free; later ones move the cosine a little.
    """

    FIT_AFTER = (10, 25, 50, 100, 200)
    EVERY = 200

    def __init__(self, minutes, began, *, warmup, at_most=None):
        if minutes <= 0:
            raise ValueError(f"--minutes must be positive, got {minutes}")
        self.deadline = began + 60.0 * minutes
        self.warmup, self.at_most = warmup, at_most
        self.reference = None  # (step, time) at the end of the first step
        self.step_seconds = None
        self.history = []  # [step, total] at each fit

    def update(self, step_done, now):
        if self.reference is None:
            self.reference = (step_done, now)
            return None
        since = step_done - self.reference[0]
        if since not in self.FIT_AFTER and (since < self.FIT_AFTER[-1] or since % self.EVERY):
            return None
        self.step_seconds = (now - self.reference[1]) / since
        total = fit_total_steps(step_done, self.step_seconds, self.deadline - now,
                                warmup=self.warmup, at_most=self.at_most)
        self.history.append([step_done, total])
        return total

    def out_of_time(self, now):
        return now >= self.deadline

    def summary(self):
        return {"step_seconds": self.step_seconds, "fits": self.history}


__all__ = ["BudgetFit", "WarmupCosineState", "fit_total_steps", "scale_by_warmup_cosine",
           "set_total_steps",
           "total_steps", "warmup_cosine"]
