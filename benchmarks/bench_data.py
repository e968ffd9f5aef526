"""Benchmark the data layer: preparing shapes images, and pipeline throughput.

    python benchmarks/bench_data.py            # 1,000 images; batches of 8 at 128x128
    python benchmarks/bench_data.py --workers 2

Prints the time to prepare ``--num`` shapes images (TFDS ArrayRecord, into a temporary folder)
and the images per second that ``make_loader`` delivers over ``--batches`` batches.
"""

import argparse
import logging
import tempfile
import time

import tensorflow_datasets as tfds

from mrcnn_jax.data import make_loader, prepare_shapes, shapes_source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="shapes images to prepare")
    parser.add_argument("--size", type=int, default=128, help="image side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=100, help="batches to time")
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    with tempfile.TemporaryDirectory() as data_dir:
        start = time.perf_counter()
        prepare_shapes(data_dir, num_train=args.num, num_val=0, image_size=args.size)
        prepare_s = time.perf_counter() - start
        print(f"prepare {args.num} shapes images at {args.size}x{args.size}: {prepare_s:.2f} s "
              f"({args.num / prepare_s:.0f} images/s)")
        source = shapes_source("train", data_dir, num_train=args.num, num_val=0,
                               image_size=args.size)
        loader = make_loader(source, args.batch, image_size=args.size, max_instances=8,
                             seed=0, num_epochs=None, worker_count=args.workers)
        iterator = iter(loader)
        next(iterator)  # start-up (and worker spawn) not timed
        start = time.perf_counter()
        for _ in range(args.batches):
            next(iterator)
        seconds = time.perf_counter() - start
        images = args.batches * args.batch
        print(f"pipeline, batches of {args.batch} at {args.size}x{args.size}, "
              f"{args.workers} workers: {images / seconds:.0f} images/s "
              f"({1000 * seconds / args.batches:.1f} ms per batch)")


if __name__ == "__main__":
    main()
