"""Check for notebooks/09_training: the learning-rate schedule of ``make_optimizer``.

``lr_schedule(step, lr, warmup, total) -> learning rate`` of ``make_optimizer(model, lr,
warmup_steps=warmup, total_steps=total)`` at step ``step``: linear from ``0.001 * lr`` at
step 0 to ``lr`` at step ``warmup``, then ``lr * (1 + cos(pi * t)) / 2`` with ``t = (step -
warmup) / (total - warmup)``, held at 0 from ``total`` on; ``warmup = 0`` means no warm-up.
``step`` is an integer or an integer array of any shape (the result has its shape); ``lr``,
``warmup`` and ``total`` are Python numbers. The oracle is the schedule ``make_optimizer`` has
used from the start, ``optax.warmup_cosine_decay_schedule(0.001 * lr, lr, warmup, total,
end_value=0)``. The schedule runs inside the jitted train step, so the check also runs it under
``jax.jit`` with a traced ``step``.
"""

import math

import numpy as np
import optax

from mrcnn_jax.course.core import call, call_jit, compare, describe_inputs, exercise

# what numpy says when a scalar-only `if step < warmup` / math.cos(step) meets an array
_SCALAR_ONLY = ("truth value of an array", "only length-1 arrays", "only 0-dimensional arrays",
                "only integer scalar arrays")


def _oracle(step, lr, warmup, total, start=0.001, end=0.0):
    schedule = optax.warmup_cosine_decay_schedule(start * lr, lr, warmup, max(total, warmup + 1),
                                                  end_value=end * lr)
    return np.asarray(schedule(np.asarray(step)), np.float32)


def _mistakes(step, lr, warmup, total):
    step = np.asarray(step, np.float64)
    cosine = 0.5 * lr * (1 + np.cos(math.pi * np.minimum(step, total) / total))
    warm = 0.001 * lr + (lr - 0.001 * lr) * step / max(warmup, 1)
    free = 0.5 * lr * (1 + np.cos(math.pi * (step - warmup) / (total - warmup)))
    return (
        ("the warm-up starts at 0.001 * lr (not 0) and rises linearly to lr at step warmup",
         lambda: _oracle(step, lr, warmup, total, start=0.0)),
        ("the cosine starts where the warm-up ends: t = (step - warmup) / (total - warmup), "
         "not step / total", lambda: np.where(step < warmup, warm, cosine)),
        ("after `total` steps the rate stays at 0: clip t to [0, 1] (jnp.clip), or the cosine "
         "climbs back up", lambda: np.where(step < warmup, warm, free)),
        ("the cosine ends at 0, not at the warm-up's starting value 0.001 * lr",
         lambda: _oracle(step, lr, warmup, total, end=0.001)),
    )


@exercise("lr_schedule")
def check_lr_schedule(fn):
    """Check ``fn(step, lr, warmup, total) -> learning rate(s)`` (module docstring)."""
    def run(case, step, lr, warmup, total, jit=False):
        inputs = describe_inputs((step, lr, warmup, total),
                                 names=("step", "lr", "warmup", "total"))
        try:
            got = (call_jit(case, fn, step, lr, warmup, total, static_argnums=(1, 2, 3)) if jit
                   else call(case, fn, step, lr, warmup, total))
        except AssertionError as error:
            if any(words in str(error) for words in _SCALAR_ONLY):
                raise AssertionError(f"{error}\n  hint: `step` is an array of steps, so a "
                                     f"Python `if` or math.cos cannot handle it: compute both "
                                     f"pieces with jnp and pick with jnp.where") from error
            raise
        compare(case, got, _oracle(step, lr, warmup, total), inputs, rtol=1e-5, atol=1e-7,
                mistakes=_mistakes(step, lr, warmup, total), what="learning rate")

    hand = np.array([0, 5, 10, 60, 110], np.int32)
    run("hand example: lr 1, warm-up 10, 110 steps: 0.001, 0.5005, 1, 0.5, 0", hand, 1.0, 10,
        110)
    rng = np.random.default_rng(30)
    steps = np.sort(rng.integers(0, 1000, 16)).astype(np.int32)
    run("random steps, lr 0.02, warm-up 100, 1000 steps", steps, 0.02, 100, 1000)
    run("the same under jax.jit (step is traced; lr, warmup and total are static)", steps, 0.02,
        100, 1000, jit=True)
    run("one step as a 0-d array (the train step's optimizer count)", np.int32(250), 0.02, 100,
        1000, jit=True)
    run("a 2-D array of steps keeps its shape", steps.reshape(4, 4), 0.5, 300, 1000)
    run("past the end: steps 1000 ... 1500 of a 1000-step schedule stay at 0",
        np.arange(900, 1600, 50, dtype=np.int32), 0.02, 100, 1000)
    run("no warm-up (warmup 0): the cosine starts at lr on step 0",
        np.array([0, 1, 250, 500, 999, 1000], np.int32), 0.02, 0, 1000)
    run("warm-up longer than the cosine: 900 of 1000 steps", np.arange(0, 1100, 100,
                                                                          dtype=np.int32),
        0.1, 900, 1000)
