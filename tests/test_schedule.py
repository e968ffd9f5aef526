"""The learning-rate schedule with its length in the optimizer state, and fitting it to a budget."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mrcnn_jax.schedule import (
    BudgetFit,
    fit_total_steps,
    set_total_steps,
    total_steps,
    warmup_cosine,
)
from mrcnn_jax.training import make_optimizer


@pytest.mark.parametrize("lr, warmup, total", [(0.02, 5, 25), (0.02, 200, 2800), (0.1, 1, 7)])
def test_equals_optax_warmup_cosine(lr, warmup, total):
    ref = optax.warmup_cosine_decay_schedule(lr * 0.001, lr, warmup, total)
    steps = np.arange(total + 3)
    np.testing.assert_allclose(np.asarray(warmup_cosine(steps, lr, warmup, total)),
                               [float(ref(s)) for s in steps], rtol=1e-5, atol=1e-9)


def test_hand_values():
    # lr 0.02, warm-up 5, 25 steps: 2e-5 at 0, 0.02 at 5, 0.02 * (1 + cos(pi * 19/20)) / 2 at 24
    got = np.asarray(warmup_cosine(np.array([0, 5, 24, 25, 30]), 0.02, 5, 25))
    want = [2e-5, 0.02, 0.01 * (1 + math.cos(math.pi * 19 / 20)), 0.0, 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def _probe(total=None):
    model = nnx.Linear(1, 1, use_bias=False, rngs=nnx.Rngs(0))
    opt = make_optimizer(model, 0.02, momentum=0.0, weight_decay=0.0, warmup_steps=5,
                         total_steps=total)
    return model, opt


TRACES = []


@nnx.jit
def _one_update(model, opt):
    TRACES.append(1)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    before = model.kernel.value
    opt.update(model, grads)
    return before - model.kernel.value  # = lr(step) for a gradient of 1


def test_set_total_steps_changes_the_rate_without_a_retrace():
    model, opt = _probe(total=25)
    TRACES.clear()
    rates = [float(_one_update(model, opt)[0, 0]) for _ in range(8)]  # steps 0..7, total 25
    assert total_steps(opt) == 25
    set_total_steps(opt, 9)  # steps 8 and 9 now lie at the end of a shorter cosine
    rates += [float(_one_update(model, opt)[0, 0]) for _ in range(2)]
    assert total_steps(opt) == 9 and len(TRACES) == 1
    want = [float(warmup_cosine(s, 0.02, 5, 25)) for s in range(8)]
    want += [float(warmup_cosine(s, 0.02, 5, 9)) for s in (8, 9)]
    np.testing.assert_allclose(rates, want, rtol=2e-4, atol=1e-7)  # read off a float32 weight
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)  # step 9 of 9: the decay has ended


def test_no_total_keeps_the_peak_after_warmup():
    model, opt = _probe(total=None)
    rates = [float(_one_update(model, opt)[0, 0]) for _ in range(12)]
    np.testing.assert_allclose(rates[5:], 0.02, rtol=1e-5)


def test_fit_total_steps():
    # 100 done, 0.5 s per step, 60 s left, 3% reserve: 116 more
    assert fit_total_steps(100, 0.5, 60.0, warmup=10) == 216
    assert fit_total_steps(100, 0.5, 60.0, warmup=10, at_most=150) == 150
    assert fit_total_steps(5, 1.0, -3.0, warmup=10) == 11  # out of time: never below warm-up + 1
    with pytest.raises(ValueError, match="positive"):
        fit_total_steps(0, 0.0, 10.0, warmup=1)


def test_budget_fit_half_speed_machine_ends_its_schedule_in_time():
    # Simulated clocks: compile 30 s, then a steady step time; the fitted length must make the
    # schedule end inside the budget on both machines, the slow one with about half the steps.
    ends = {}
    for step_time in (0.3, 0.6):
        fit = BudgetFit(15, began=0.0, warmup=200)
        now, step, total = 30.0, 0, 10**9
        while step < total and not fit.out_of_time(now):
            step += 1
            now += step_time if step > 1 else 0.0
            new = fit.update(step, now)
            total = new if new is not None else total
        ends[step_time] = (step, total, now)
        assert step == total, f"stopped at {step} of {total} (step time {step_time})"
        assert now <= 15 * 60
    assert ends[0.3][0] == pytest.approx(2 * ends[0.6][0], rel=0.02)
    # the reserve is a fraction of the time left at each fit, so it shrinks as the run goes
    assert 0.95 * 870 / 0.3 <= ends[0.3][0] <= 870 / 0.3
