"""Convolution kernels on the CPU: XLA's defaults against the package's options, and torch.

    python benchmarks/bench_conv_kernels.py            # the convolutions of a small_config step
    python benchmarks/bench_conv_kernels.py --repeats 40 --no_torch
    python benchmarks/bench_conv_kernels.py --cases r50 --repeats 5   # predict's, forward only

For each convolution shape of a ``small_config`` training step (batch 8 of 128x128; the mask
head's on 8 x 64 RoIs of 14x14), the forward pass, the gradient with respect to the input
(``dx``) and with respect to the kernel (``dw``), each jitted alone, median of ``--repeats``
calls: once compiled with XLA's defaults (YNNPACK for convolutions and matrix products) and
once with ``mrcnn_jax.xla_cpu.CPU_OPTIONS`` (YNNPACK for matrix products only, convolutions by
XLA's Eigen kernels), in the same process. torch's ``conv2d`` forward and forward+backward on
the same shapes, if torch is installed, for scale. The gradients of both compilations are
checked equal (relative 1e-4) before timing. ``--cases r50``: the largest 3x3 convolutions of
R50-FPN ``predict`` on one 800x1088 image, forward only (what inference runs).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.xla_cpu import CPU_OPTIONS

# name, batch, size, in channels, out channels, kernel, stride
CASES = [
    ("stem 7x7/2", 8, 128, 3, 32, 7, 2),
    ("layer1 3x3", 8, 32, 32, 32, 3, 1),
    ("layer2 3x3/2", 8, 32, 32, 64, 3, 2),
    ("layer3 3x3", 8, 8, 128, 128, 3, 1),
    ("layer4 3x3", 8, 4, 256, 256, 3, 1),
    ("FPN/RPN 3x3 on P2", 8, 32, 64, 64, 3, 1),
    ("mask head 3x3", 64, 14, 64, 64, 3, 1),
    ("1x1 lateral", 8, 32, 64, 64, 1, 1),
]
# R50-FPN predict, one 800x1088 image: (height, width) instead of a size
R50_CASES = [
    ("R50 layer1 3x3", 1, (200, 272), 64, 64, 3, 1),
    ("R50 layer2 3x3", 1, (100, 136), 128, 128, 3, 1),
    ("R50 layer3 3x3", 1, (50, 68), 256, 256, 3, 1),
    ("R50 layer4 3x3", 1, (25, 34), 512, 512, 3, 1),
    ("FPN output / RPN 3x3 on P2", 1, (200, 272), 256, 256, 3, 1),
    ("mask head 3x3, 100 RoIs", 100, (14, 14), 256, 256, 3, 1),
]


def median_ms(fn, repeats):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def conv(x, w, stride):
    pad = w.shape[0] // 2
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def time_jax(x, w, stride, options, repeats, forward_only=False):
    fwd = jax.jit(lambda x, w: conv(x, w, stride), compiler_options=options)
    if forward_only:
        return [median_ms(lambda: fwd(x, w), repeats), float("nan"), float("nan")], ()
    dy = jnp.ones_like(conv(x, w, stride))
    dx = jax.jit(lambda x, w: jax.vjp(lambda x: conv(x, w, stride), x)[1](dy)[0],
                 compiler_options=options)
    dw = jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w, stride), w)[1](dy)[0],
                 compiler_options=options)
    grads = (dx(x, w), dw(x, w))
    times = [median_ms(lambda f=f: f(x, w), repeats) for f in (fwd, dx, dw)]
    return times, grads


def time_torch(x, w, stride, repeats, forward_only=False):
    import torch

    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(np.asarray(w).transpose(3, 2, 0, 1).copy(), requires_grad=True)
    pad = w.shape[0] // 2

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)

    def both():
        torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad).sum().backward()

    if forward_only:
        return [median_ms(forward, repeats), float("nan")]
    return [median_ms(lambda f=f: f(), repeats) for f in (forward, both)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--cases", choices=("small", "r50"), default="small")
    args = parser.parse_args()
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch
            torch.set_num_threads(2)
        except ImportError:
            use_torch = False
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}; ms per call, median of "
          f"{args.repeats}")
    head = ("| convolution | fwd default | fwd options | dx default | dx options "
            "| dw default | dw options |")
    if use_torch:
        head += " torch fwd | torch fwd+bwd |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    rng = np.random.default_rng(0)
    forward_only = args.cases == "r50"
    for name, n, size, cin, cout, k, stride in R50_CASES if forward_only else CASES:
        height, width = size if isinstance(size, tuple) else (size, size)
        x = jnp.asarray(rng.normal(size=(n, height, width, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
        default, grads_default = time_jax(x, w, stride, None, args.repeats, forward_only)
        options, grads_options = time_jax(x, w, stride, CPU_OPTIONS, args.repeats, forward_only)
        for a, b in zip(grads_default, grads_options, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(a))))
        cell = lambda t: "-" if np.isnan(t) else f"{t:.2f}"  # noqa: E731  (not measured: -)
        row = [name] + [cell(t) for pair in zip(default, options, strict=True) for t in pair]
        if use_torch:
            row += [cell(t) for t in time_torch(x, w, stride, args.repeats, forward_only)]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
