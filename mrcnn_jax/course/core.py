"""Shared machinery of the course checks: run a student's function, compare, explain, record.

A check is a function ``check_<exercise>(fn)`` decorated with :func:`exercise`. Its body calls
the student's ``fn`` through :func:`call` (or :func:`call_jit`), compares with :func:`compare`
and raises ``AssertionError`` on the first wrong case. The decorator turns the outcome into one
of three words and records it:

- ``correct``: every case passed; prints ``<exercise>: correct``;
- ``not attempted``: ``fn`` raised ``NotImplementedError``; prints it and returns (no error, so a
  student edition runs top to bottom);
- ``wrong``: re-raises the ``AssertionError``, whose message names the case, the inputs,
  expected and got (shape, dtype, values), the largest error and where, and a hint when the
  answer matches a common mistake.

Every outcome goes into :data:`RESULTS` and, when the environment variable ``MRCNN_COURSE_RESULTS``
names a file, is appended to it as one JSON line: that is how ``python -m mrcnn_jax.course.grade``
collects the results of a notebook it runs.

Naming: a *case* is one named input (hand example, random, edge case); an *oracle* is the
package's own implementation, which gives the expected answer; a *mistake* is a known-wrong
implementation whose output, if the student's matches it, selects a hint.
"""

import functools
import json
import os

import jax
import numpy as np

RESULTS_ENV = "MRCNN_COURSE_RESULTS"
RESULTS = {}  # exercise -> {"status": ..., "message": ...}, last outcome of each check
CORRECT, WRONG, NOT_ATTEMPTED = "correct", "wrong", "not attempted"


NONFINITE = "non-finite"  # a mistake model's answer meaning "some NaN or inf"


class NotAttempted(Exception):
    """The student's function raised ``NotImplementedError``."""


def record(name, status, message=""):
    """Store an outcome in :data:`RESULTS` and in the ``MRCNN_COURSE_RESULTS`` file if set."""
    RESULTS[name] = {"status": status, "message": message}
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"exercise": name, "status": status, "message": message}) + "\n")


def exercise(name):
    """Decorator making ``body(fn)`` a check that prints and records its outcome."""

    def wrap(body):
        @functools.wraps(body)
        def check(fn):
            try:
                body(fn)
            except NotAttempted:
                record(name, NOT_ATTEMPTED)
                print(f"{name}: not attempted (your function raises NotImplementedError)")
                return False
            except AssertionError as error:
                record(name, WRONG, str(error))
                raise
            record(name, CORRECT)
            print(f"{name}: correct")
            return True

        check.exercise = name
        return check

    return wrap


# Tracer errors and the plain advice each deserves.
_TRACER_ADVICE = (
    (jax.errors.TracerBoolConversionError,
     "a Python `if`, `while`, `and`/`or` or `bool()` on a traced value; use `jnp.where` "
     "(or `jax.lax.cond` / `jax.lax.while_loop`)"),
    (jax.errors.NonConcreteBooleanIndexError,
     "boolean-mask indexing (`x[mask]`) gives a shape that depends on the data; keep the full "
     "shape and use `jnp.where(mask, x, fill)`"),
    (jax.errors.TracerIntegerConversionError,
     "`int()` or Python indexing with a traced value; use `jnp` indexing or `jax.lax` loops"),
    (jax.errors.TracerArrayConversionError,
     "a `numpy` (`np.`) function or `np.asarray` on a traced value; use `jax.numpy` (`jnp.`)"),
    (jax.errors.ConcretizationTypeError,
     "a traced value used where a Python number is needed (a shape, `range(n)`, a slice "
     "bound): shapes must not depend on the data; use fixed sizes with a mask"),
)


def tracer_advice(error):
    """Plain advice for a tracer error raised under ``jax.jit``, or None."""
    for kind, advice in _TRACER_ADVICE:
        if isinstance(error, kind):
            return advice
    return None


def _as_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x), tree)


def call(case, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` as numpy; NotImplementedError -> NotAttempted, other errors ->
    AssertionError naming the case."""
    try:
        return _as_numpy(fn(*args, **kwargs))
    except NotImplementedError as error:
        raise NotAttempted() from error
    except AssertionError:
        raise
    except Exception as error:  # the student's code failed: say where and how
        advice = tracer_advice(error)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise AssertionError(
            f"case '{case}': your function raised {type(error).__name__}: {first}\n"
            + (f"  Likely cause: {advice}.\n" if advice else "")
            + f"  inputs: {describe_inputs(args, kwargs)}"
        ) from error


_JIT_CACHE = {}


def _jitted(fn, num_args, names, static):
    """One ``jax.jit`` wrapper per (fn, call layout), so repeated calls reuse the compilation."""
    cache_key = (fn, num_args, names, static)
    if cache_key not in _JIT_CACHE:
        def positional(*all_args):
            return fn(*all_args[:num_args], **dict(zip(names, all_args[num_args:], strict=True)))

        _JIT_CACHE[cache_key] = jax.jit(positional, static_argnums=static + tuple(
            range(num_args, num_args + len(names))))
    return _JIT_CACHE[cache_key]


def call_jit(case, fn, *args, static_argnums=(), **kwargs):
    """Run ``fn`` under ``jax.jit`` (kwargs and ``static_argnums`` static); tracer errors become
    plain advice."""
    jitted = _jitted(fn, len(args), tuple(kwargs), tuple(static_argnums))
    try:
        return _as_numpy(jitted(*args, *kwargs.values()))
    except NotImplementedError as error:
        raise NotAttempted() from error
    except AssertionError:
        raise
    except Exception as error:
        advice = tracer_advice(error)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if advice is None:
            raise AssertionError(
                f"case '{case}' under jax.jit: your function raised {type(error).__name__}: "
                f"{first}\n  It works without jit? Then it depends on Python values of arrays."
            ) from error
        raise AssertionError(
            f"case '{case}' under jax.jit: your function fails when traced "
            f"({type(error).__name__}).\n  Likely cause: {advice}.\n  JAX said: {first}"
        ) from error


def _fmt(value):
    with np.printoptions(precision=5, threshold=24, edgeitems=3, suppress=True, linewidth=100):
        if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype,
                                                                  jax.dtypes.prng_key):
            return f"PRNG key, shape {value.shape}"
        if isinstance(value, (np.ndarray, jax.Array)):
            value = np.asarray(value)
            return f"shape {value.shape} {value.dtype}: {np.array2string(value)}".replace(
                "\n", "\n      ")
        return repr(value)


def describe_inputs(args, kwargs=None, names=None):
    """One line per input: name (or position), shape, dtype, values (summarised)."""
    parts = []
    names = names or [f"arg{i}" for i in range(len(args))]
    for name, value in zip(names, args, strict=False):
        parts.append(f"{name} = {_fmt(value)}")
    for name, value in (kwargs or {}).items():
        parts.append(f"{name} = {_fmt(value)}")
    return "\n    " + "\n    ".join(parts) if parts else "(none)"


def _is_exact(expected):
    return expected.dtype.kind in "biu"


def _matches(got, expected, rtol, atol):
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return False
    if _is_exact(expected):
        return got.dtype.kind in "biu" and np.array_equal(got, expected)
    if got.dtype.kind not in "fiub":
        return False
    return bool(np.allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol,
                            atol=atol, equal_nan=True))


def compare(case, got, expected, inputs="", rtol=1e-5, atol=1e-5, mistakes=(), what="result"):
    """Raise AssertionError with a full explanation unless ``got`` matches ``expected``.

    Args:
      case: the case's name; inputs: ``describe_inputs(...)`` text.
      got, expected: arrays; integer and boolean ``expected`` compare exactly, floats with
        ``rtol``/``atol`` (NaN never matches a number).
      mistakes: ``(hint, wrong_fn)`` pairs; ``wrong_fn()`` gives what a known mistake returns
        on this case, and the hint is shown when ``got`` matches it.
      what: which output this is (``"indices"``, ``"valid"``...).
    """
    got, expected = np.asarray(got), np.asarray(expected)
    if _matches(got, expected, rtol, atol):
        return
    lines = [f"case '{case}': {what} is wrong.", f"  inputs: {inputs}" if inputs else None,
             f"  expected {_fmt(expected)}", f"  got      {_fmt(got)}"]
    if got.shape != expected.shape:
        lines.append(f"  the shapes differ: expected {expected.shape}, got {got.shape}")
    elif _is_exact(expected) and got.dtype.kind not in "biu":
        lines.append(f"  expected integers or booleans ({expected.dtype}), got {got.dtype}")
    elif got.size:
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        nan = np.isnan(got.astype(np.float64)) & ~np.isnan(expected.astype(np.float64))
        if nan.any():
            where = tuple(int(i) for i in np.argwhere(nan)[0])
            lines.append(f"  NaN at index {where} where {expected[where]} was expected "
                         f"({int(nan.sum())} NaN in all): 0/0 or log(0) somewhere?")
        else:
            diff = np.where(np.isnan(diff), np.inf, diff)
            where = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
            off = int(np.sum(diff > atol + rtol * np.abs(expected.astype(np.float64))))
            lines.append(f"  largest error {diff[where]:.6g} at index {where}: expected "
                         f"{expected[where]}, got {got[where]}; {off} of {diff.size} entries "
                         f"off")
    for hint, wrong_fn in mistakes:
        try:
            wrong = wrong_fn()
        except Exception:  # a mistake model that cannot run here gives no hint
            continue
        if isinstance(wrong, str) and wrong == NONFINITE:
            hit = got.dtype.kind == "f" and not np.all(np.isfinite(got))
        else:
            hit = _matches(got, wrong, max(rtol, 1e-4), max(atol, 1e-4))
        if hit:
            lines.append(f"  hint: {hint}")
            break
    raise AssertionError("\n".join(line for line in lines if line))


def require(condition, case, message):
    """AssertionError ``case '...': message`` unless ``condition``."""
    if not condition:
        raise AssertionError(f"case '{case}': {message}")


def compare_grad(case, student_loss, oracle_loss, args, argnums=0, inputs="", rtol=1e-4,
                 atol=1e-5, mistakes=()):
    """Gradients of two scalar functions of ``args`` agree (finite, same values); both are
    taken under ``jax.jit`` (the function already passed the check's jit cases)."""
    try:
        got = jax.jit(jax.grad(student_loss, argnums=argnums))(*args)
    except NotImplementedError as error:
        raise NotAttempted() from error
    except Exception as error:
        raise AssertionError(
            f"case '{case}': jax.grad of your function failed with {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}") from error
    expected = jax.jit(jax.grad(oracle_loss, argnums=argnums))(*args)
    got, expected = np.asarray(got), np.asarray(expected)
    if np.isnan(got).any() and not np.isnan(expected).any():
        where = tuple(int(i) for i in np.argwhere(np.isnan(got))[0])
        extra = " ".join(h for h, f in mistakes)
        raise AssertionError(
            f"case '{case}': the gradient of your function has NaN at index {where} (the value "
            f"itself may be fine). jnp.where evaluates both branches, and the gradient of the "
            f"unused one still flows: a division by zero or sqrt/log of 0 there gives NaN. "
            f"{extra}\n  inputs: {inputs}")
    compare(case, got, expected, inputs, rtol=rtol, atol=atol, what="gradient")
