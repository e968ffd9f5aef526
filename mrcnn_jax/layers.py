"""Small NNX layers with torchvision's exact semantics: convolution, frozen BatchNorm, norms.

Flax's own ``nnx.Conv`` pads ``"SAME"`` asymmetrically on stride 2, which shifts features by a
pixel against torchvision; these layers take torchvision's symmetric padding so imported
weights give the same numbers. Kernels are stored HWIO ``(kh, kw, in, out)``.

A parameter that must not train (frozen stem and ``layer1`` of an imported backbone, frozen
BatchNorm statistics) is held in a :class:`Frozen` variable instead of ``nnx.Param``; optimizers
built with ``wrt=nnx.Param`` never see it, so neither gradients nor weight decay touch it.

Shape shorthand: ``N`` images, ``H, W`` spatial size, ``C`` channels.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx


class Frozen(nnx.Variable):
    """A weight that is loaded or initialised but never trained."""


def _variable(value, trainable):
    return nnx.Param(value) if trainable else Frozen(value)


def kaiming_normal_fan_out(key, shape):
    """He init for a ReLU conv, fan-out mode (torchvision ResNet and mask head)."""
    kh, kw, _, cout = shape
    return jax.random.normal(key, shape, jnp.float32) * math.sqrt(2.0 / (kh * kw * cout))


def kaiming_uniform_a1(key, shape):
    """torchvision FPN init: ``kaiming_uniform_(a=1)``, bound ``sqrt(3 / fan_in)``."""
    fan_in = shape[0] * shape[1] * shape[2]
    bound = math.sqrt(3.0 / fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def kaiming_uniform_sqrt5(key, shape):
    """PyTorch's default ``nn.Conv2d`` init: ``kaiming_uniform_(a=sqrt(5))``, bound
    ``1 / sqrt(fan_in)``; variance ``1 / (3 fan_in)``, a sixth of He fan-out's for a square 3x3."""
    fan_in = shape[0] * shape[1] * shape[2]
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


CONV_INITS = {"kaiming_normal_fan_out": kaiming_normal_fan_out,
              "kaiming_uniform_sqrt5": kaiming_uniform_sqrt5}


def _cast(dtype, x):
    return x if dtype is None else x.astype(dtype)


def _compute(dtype, kernel, bias):
    """Kernel and bias values in the compute dtype (float32 weights are cast per call)."""
    return _cast(dtype, kernel), None if bias is None else _cast(dtype, bias[...])


def set_compute_dtype(module, dtype):
    """Run every convolution and linear layer under ``module`` in ``dtype`` ("float32" or
    "bfloat16"); parameters stay float32 and norms compute their statistics in float32."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
    value = None if dtype == "float32" else jnp.dtype(dtype)
    for _, layer in module.iter_modules():
        if isinstance(layer, Conv2d | ConvTranspose2x2 | nnx.Linear):
            layer.dtype = value


class Conv2d(nnx.Module):
    """2-D convolution, NHWC, symmetric padding like ``torch.nn.Conv2d``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 use_bias=True, trainable=True, init=kaiming_normal_fan_out, *, rngs):
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = _variable(init(rngs.params(), shape), trainable)
        self.bias = _variable(jnp.zeros((out_channels,)), trainable) if use_bias else None
        self.stride = stride
        self.padding = padding
        self.dtype = None  # compute dtype (bfloat16); None: float32. Weights stay float32.

    def __call__(self, x):  # (N, H, W, Cin) -> (N, H', W', Cout)
        kernel, bias = _compute(self.dtype, self.kernel[...], self.bias)
        if kernel.shape[:2] == (1, 1) and self.padding == 0:
            # A 1x1 convolution is a matrix product over the (strided) cells. As a dot its
            # kernel gradient needs no transposed copy of the input, which XLA:CPU's
            # convolution made (benchmarks/README.md, issue 19).
            x = x[:, ::self.stride, ::self.stride] if self.stride > 1 else x
            y = _cast(self.dtype, x) @ kernel[0, 0]
            return y if bias is None else y + bias
        pad = ((self.padding, self.padding), (self.padding, self.padding))
        y = jax.lax.conv_general_dilated(
            _cast(self.dtype, x), kernel, (self.stride, self.stride), pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y if bias is None else y + bias


class ConvTranspose2x2(nnx.Module):
    """``torch.nn.ConvTranspose2d(kernel_size=2, stride=2)``: each input cell becomes 2x2.

    With kernel = stride = 2 the output cells never overlap:
    ``y[n, 2i + a, 2j + b, o] = sum_c x[n, i, j, c] * kernel[a, b, c, o] + bias[o]``.
    torchvision's weight ``(in, out, a, b)`` is this kernel transposed ``(2, 3, 0, 1)``.

    Computed as two matrix products, one per output row parity ``a``: the cells
    ``(N*H*W, Cin + 1)``, a column of ones appended, times ``(Cin + 1, 2 * Cout)``, the taps
    ``b = 0, 1`` side by side with the bias repeated under them. Each product's rows are then
    whole output rows (``b`` and ``o`` innermost), so placing them is a concatenation of long
    runs, not a transpose. Carrying the bias inside the products makes its gradient part of the
    kernel's: XLA:CPU had summed it over the ``(N, 2H, 2W)`` output as a separate reduction
    that took longer than the products themselves (``benchmarks/README.md``, issue 19).
    """

    def __init__(self, in_channels, out_channels, *, rngs):
        shape = (2, 2, in_channels, out_channels)
        self.kernel = nnx.Param(kaiming_normal_fan_out(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_channels,)))
        self.dtype = None  # compute dtype, as Conv2d

    def __call__(self, x):  # (N, H, W, Cin) -> (N, 2H, 2W, Cout)
        n, h, w, c = x.shape
        kernel, bias = _compute(self.dtype, self.kernel[...], self.bias)
        out = kernel.shape[-1]
        cells = _cast(self.dtype, x).reshape(n * h * w, c)
        cells = jnp.concatenate([cells, jnp.ones((n * h * w, 1), cells.dtype)], axis=1)
        rows = []
        for a in range(2):  # output rows 2i + a: (N, H, 1, W * 2 * Cout), b then o innermost
            taps = kernel[a].transpose(1, 0, 2).reshape(c, 2 * out)  # (Cin, [b, o])
            weight = jnp.concatenate([taps, jnp.tile(bias, 2)[None]])  # (Cin + 1, 2 * Cout)
            rows.append((cells @ weight).reshape(n, h, 1, w * 2 * out))
        return jnp.concatenate(rows, axis=2).reshape(n, 2 * h, 2 * w, out)


class FrozenBatchNorm(nnx.Module):
    """torchvision ``FrozenBatchNorm2d``: ``x * w / sqrt(var + eps) + (b - mean * scale)``."""

    def __init__(self, channels, eps=1e-5):
        self.weight = Frozen(jnp.ones((channels,)))
        self.bias = Frozen(jnp.zeros((channels,)))
        self.running_mean = Frozen(jnp.zeros((channels,)))
        self.running_var = Frozen(jnp.ones((channels,)))
        self.eps = eps

    def __call__(self, x):  # (N, H, W, C)
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        return x * scale + (self.bias[...] - self.running_mean[...] * scale)


def make_norm(kind, channels, groups=32, eps=1e-5, zero_init=False, trainable=True, *, rngs):
    """``"frozen_bn"`` or ``"group_norm"`` over ``channels``; ``zero_init`` starts scale at 0;
    ``trainable=False`` freezes a GroupNorm's scale and bias too (frozen BN never trains)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm(channels, eps)
    if kind == "group_norm":
        init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
        norm = nnx.GroupNorm(channels, num_groups=min(groups, channels), epsilon=1e-5,
                             scale_init=init, rngs=rngs)
        if not trainable:
            norm.scale, norm.bias = Frozen(norm.scale[...]), Frozen(norm.bias[...])
        return norm
    raise ValueError(f"norm must be 'frozen_bn' or 'group_norm'; got {kind!r}")


def max_pool(x, window, stride, padding):
    """``torch.nn.functional.max_pool2d`` on NHWC with symmetric padding (pads with -inf).

    Separable: the maximum of ``window`` strided row slices, then of ``window`` strided column
    slices of that. The forward values equal ``lax.reduce_window``'s; the backward pass is a
    chain of element-wise selects instead of XLA:CPU's ``select_and_scatter``, which took
    about 5% of the small preset's training step here (benchmarks/README, issue 19). Where
    several cells of a window hold the same maximum, the gradient is shared between them
    (``jnp.maximum``'s rule) rather than given to the first one as torch does.
    """
    _, h, w, _ = x.shape
    out_h = (h + 2 * padding - window) // stride + 1
    out_w = (w + 2 * padding - window) // stride + 1
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                    constant_values=-jnp.inf)
    rows = x[:, 0:(out_h - 1) * stride + 1:stride]
    for a in range(1, window):
        rows = jnp.maximum(rows, x[:, a:a + (out_h - 1) * stride + 1:stride])
    out = rows[:, :, 0:(out_w - 1) * stride + 1:stride]
    for b in range(1, window):
        out = jnp.maximum(out, rows[:, :, b:b + (out_w - 1) * stride + 1:stride])
    return out
