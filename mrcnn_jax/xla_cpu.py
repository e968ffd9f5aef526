"""How the package's jitted functions are compiled: XLA:CPU options, and an NNX ``jit`` that
passes them.

XLA:CPU (jax 0.10) hands every convolution and matrix product to the YNNPACK library by
default. Its convolutions are slow in the two shapes a training step needs most: the gradient
of a convolution's kernel (a convolution whose window is the whole feature map) and the 7x7
stem on 3 channels. Measured on the project's 2-core CPU (``benchmarks/README.md``, "XLA:CPU
options"): the kernel gradient of the mask head's 3x3 convolution on 64 RoIs of 14x14 took
27 ms by YNNPACK and 7 ms by XLA's own Eigen convolution. :data:`CPU_OPTIONS` keeps YNNPACK for
matrix products only, and the whole ``small_config`` training step went from 0.63 s to 0.45 s.
Only the order of floating-point additions changes; the parity tests hold as before.

Options are per compilation (``jax.jit(..., compiler_options=...)``), not process-wide
``XLA_FLAGS``: nothing else in the user's process changes, and a backend other than the CPU,
or a jaxlib that does not know the option, compiles as it would have anyway
(:func:`compiler_options` checks once). ``MRCNN_JAX_NO_CPU_OPTIONS=1`` in the environment turns
them off (XLA's defaults), to compare.

``nnx.jit`` takes no compiler options, so :func:`jit` does its job for the functions this
package compiles: the first ``objects`` arguments are NNX objects (a model, an optimizer),
split into a static graph and a state of arrays before the call and, when the function changes
them (``mutable=True``, a training step), updated in place from the returned state, whose old
buffers are donated. The split costs less Python per call than ``nnx.jit``'s own (measured
~5 ms against ~25 ms for the training step), which counts on a CPU where a step is 0.3 s.
"""

import functools
import os

import jax
from flax import nnx

# XLA:CPU debug options (xla.DebugOptions fields) for every jitted function of the package.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options(backend):
    """:data:`CPU_OPTIONS` on a CPU backend whose XLA knows them; ``None`` elsewhere."""
    if backend != "cpu" or os.environ.get("MRCNN_JAX_NO_CPU_OPTIONS", "0") == "1":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(1.0).compile()
    except Exception:  # an older or newer XLA without these options: compile as before
        return None
    return dict(CPU_OPTIONS)


def jit(fun=None, *, objects=1, mutable=False, static_argnums=()):
    """``nnx.jit`` for ``fun(obj_1, ..., obj_k, *args)`` with the package's compiler options.

    Args:
      fun: the function; used as a decorator without it.
      objects: how many leading arguments are NNX objects (``k``).
      mutable: ``fun`` changes those objects (their variables): the new state is written back
        after the call and the old arrays are donated to it.
      static_argnums: positions among ``args`` (after the objects) that are static (hashable).
    """
    if fun is None:
        return functools.partial(jit, objects=objects, mutable=mutable,
                                 static_argnums=static_argnums)

    def pure(graphdef, state, *args):
        objs = nnx.merge(graphdef, state)
        out = fun(*objs, *args)
        return (nnx.state(objs), out) if mutable else out

    pure.__name__ = pure.__qualname__ = fun.__name__  # the compiled module's name: jit_<fun>
    static = (0, *(2 + i for i in static_argnums))
    compiled = {}

    def jitted_for(backend):
        if backend not in compiled:
            compiled[backend] = jax.jit(
                pure, static_argnums=static, donate_argnums=(1,) if mutable else (),
                compiler_options=compiler_options(backend))
        return compiled[backend]

    @functools.wraps(fun)
    def wrapper(*args):
        objs, rest = args[:objects], args[objects:]
        graphdef, state = nnx.split(objs)
        out = jitted_for(jax.default_backend())(graphdef, state, *rest)
        if mutable:
            new_state, out = out
            nnx.update(objs, new_state)
        return out

    wrapper.lower = lambda *args: jitted_for(jax.default_backend()).lower(
        *nnx.split(args[:objects]), *args[objects:])
    return wrapper
