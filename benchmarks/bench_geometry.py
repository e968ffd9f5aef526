"""Time jitted roi_align (forward, forward+backward) and nms against torchvision's C++ kernels.

    python benchmarks/bench_geometry.py            # needs torch + torchvision for the reference
    python benchmarks/bench_geometry.py --repeats 50

Sizes are the issue's: roi_align on 2 images x 256 channels x 64x64, 512 boxes, 7x7 output,
sampling ratio 2, aligned=False (torchvision's default); nms on 2,000 random boxes at IoU 0.5.
Both libraries get the same arrays (NHWC for us, NCHW for torchvision) on the same CPU in the
same run; each figure is the median of ``--repeats`` timed calls after warm-up (compile
excluded for JAX, reported separately). The script checks the two outputs agree before timing.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import mrcnn_jax


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(2, 64, 64, 256)).astype(np.float32)  # NHWC, stride 4 map
    xy = rng.uniform(0, 240, size=(512, 2))
    wh = rng.uniform(8, 128, size=(512, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)  # 256x256 image pixels
    batch = rng.integers(0, 2, size=512).astype(np.int32)
    cotangent = rng.normal(size=(512, 7, 7, 256)).astype(np.float32)
    nms_xy = rng.uniform(0, 800, size=(2000, 2))
    nms_wh = rng.uniform(10, 200, size=(2000, 2))
    nms_boxes = np.concatenate([nms_xy, nms_xy + nms_wh], axis=1).astype(np.float32)
    nms_scores = rng.uniform(size=2000).astype(np.float32)
    return features, boxes, batch, cotangent, nms_boxes, nms_scores


def bench_jax(inputs, repeats):
    features, boxes, batch, cotangent, nms_boxes, nms_scores = map(jnp.asarray, inputs)
    pool = lambda f: mrcnn_jax.roi_align(f, boxes, batch, (7, 7), 0.25, 2, False)
    forward = jax.jit(pool)

    def forward_backward(f):  # pooled features and their gradient, as torch's autograd gives
        pooled, vjp = jax.vjp(pool, f)
        return pooled, vjp(cotangent)[0]

    backward = jax.jit(forward_backward)
    nms = jax.jit(lambda b, s: mrcnn_jax.nms(b, s, 0.5, 2000))
    results, figures = {}, {}
    for name, fn, args in (("roi_align forward", forward, (features,)),
                           ("roi_align forward+backward", backward, (features,)),
                           ("nms 2000 boxes", nms, (nms_boxes, nms_scores))):
        start = time.perf_counter()
        results[name] = jax.block_until_ready(fn(*args))
        compile_s = time.perf_counter() - start
        ms = median_ms(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)), repeats)
        figures[name] = (ms, compile_s)
    return results, figures


def bench_torch(inputs, repeats):
    import torch
    import torchvision

    features, boxes, batch, cotangent, nms_boxes, nms_scores = inputs
    f = torch.tensor(features.transpose(0, 3, 1, 2)).contiguous()
    rois = torch.tensor(np.concatenate([batch[:, None], boxes], axis=1).astype(np.float32))
    cot = torch.tensor(cotangent.transpose(0, 3, 1, 2)).contiguous()
    align = lambda x: torchvision.ops.roi_align(x, rois, (7, 7), 0.25, 2, False)

    def forward():
        with torch.no_grad():
            return align(f)

    def backward():
        x = f.clone().requires_grad_(True)
        pooled = align(x)
        (grad,) = torch.autograd.grad(pooled, x, cot)
        return pooled, grad

    b, s = torch.tensor(nms_boxes), torch.tensor(nms_scores)
    nms = lambda: torchvision.ops.nms(b, s, 0.5)
    results = {"roi_align forward": forward().numpy().transpose(0, 2, 3, 1),
               "roi_align forward+backward": backward()[1].numpy().transpose(0, 2, 3, 1),
               "nms 2000 boxes": nms().numpy()}
    figures = {name: (median_ms(fn, repeats), 0.0) for name, fn in (
        ("roi_align forward", forward), ("roi_align forward+backward", backward),
        ("nms 2000 boxes", nms))}
    return results, figures, torch.get_num_threads()


def check_agree(ours, theirs):
    ours = dict(ours, **{"roi_align forward+backward": ours["roi_align forward+backward"][1]})
    for name in ("roi_align forward", "roi_align forward+backward"):
        err = float(np.abs(np.asarray(ours[name]) - theirs[name]).max())
        assert err < 1e-3, f"{name}: max |jax - torchvision| = {err}"
    indices, valid = ours["nms 2000 boxes"]
    kept = np.asarray(indices)[np.asarray(valid)]
    assert np.array_equal(kept, theirs["nms 2000 boxes"]), "nms kept sets differ"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    inputs = make_inputs()
    ours, jax_figures = bench_jax(inputs, args.repeats)
    try:
        theirs, torch_figures, threads = bench_torch(inputs, args.repeats)
    except ImportError:
        theirs, torch_figures, threads = None, None, None
        print("torchvision not importable: JAX figures only")
    if theirs is not None:
        check_agree(ours, theirs)
        print(f"outputs agree with torchvision (torch threads: {threads})")
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, median of {args.repeats}")
    print(f"{'case':28s} {'jax ms':>9s} {'compile s':>10s} {'torchvision ms':>15s} {'ratio':>7s}")
    for name, (ms, compile_s) in jax_figures.items():
        ref = torch_figures[name][0] if torch_figures else float("nan")
        print(f"{name:28s} {ms:9.2f} {compile_s:10.2f} {ref:15.2f} {ms / ref:7.2f}")


if __name__ == "__main__":
    main()
