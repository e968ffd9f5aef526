"""Greedy against tiled NMS: loop iterations and time on this machine's JAX backend.

    python benchmarks/bench_nms.py                 # CPU here; any backend JAX finds
    python benchmarks/bench_nms.py --repeats 20 --tiles 128 256 512

Inputs are the two NMS calls of Mask R-CNN: RPN proposals (``N`` random boxes of 5-60 px in
an 800x1088 image, IoU 0.7, keep up to 1,000) and detections (per-class NMS, IoU 0.5, keep
100). Both algorithms get the same arrays in the same run; the script checks they keep the
same indices before timing. Greedy loops once per kept box; tiled loops ``N / T`` times plus
a few self-suppression passes per tile. Each time is the median of ``--repeats`` jitted calls
after warm-up (compile excluded).
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.nms import _greedy_nms, nms_tiled


def median_ms(fn, arrays, repeats):
    jax.block_until_ready(fn(*arrays))  # warm-up and compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*arrays))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def inputs(n, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, (1088, 800), (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], 1).astype(np.float32)
    scores = rng.uniform(size=n).astype(np.float32)
    classes = rng.integers(0, num_classes, n).astype(np.int32)
    return boxes, scores, classes


def greedy_with_count(boxes, scores, classes, threshold, k):
    candidate = jnp.ones(scores.shape, bool)
    indices, valid = _greedy_nms(boxes, scores, classes, candidate, threshold, k)
    return indices, valid, valid.sum()  # one loop iteration per kept box


def tiled_with_count(boxes, scores, classes, threshold, k, tile):
    return nms_tiled(boxes, scores, threshold, k, tile_size=tile, classes=classes,
                     return_iterations=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 256, 512])
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    cases = [("RPN proposals", 2000, 1, 0.7, 1000), ("RPN proposals", 4000, 1, 0.7, 1000),
             ("detections, 80 classes", 4000, 80, 0.5, 100)]
    print(f"{'case':24} {'N':>5} {'algorithm':>12} {'iterations':>10} {'ms':>8}")
    for name, n, num_classes, threshold, k in cases:
        boxes, scores, classes = inputs(n, num_classes)
        arrays = (boxes, scores, classes)
        run = jax.jit(functools.partial(greedy_with_count, threshold=threshold, k=k))
        ref_indices, ref_valid, count = run(*arrays)
        ms = median_ms(run, arrays, args.repeats)
        print(f"{name:24} {n:5d} {'greedy':>12} {int(count):10d} {ms:8.2f}")
        for tile in args.tiles:
            fn = jax.jit(functools.partial(tiled_with_count, threshold=threshold, k=k, tile=tile))
            indices, valid, iterations = fn(*arrays)
            np.testing.assert_array_equal(np.asarray(indices), np.asarray(ref_indices))
            np.testing.assert_array_equal(np.asarray(valid), np.asarray(ref_valid))
            ms = median_ms(fn, arrays, args.repeats)
            print(f"{name:24} {n:5d} {f'tiled T={tile}':>12} {int(iterations):10d} {ms:8.2f}")


if __name__ == "__main__":
    main()
