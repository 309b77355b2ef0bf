"""Throughput of the training input pipeline (read + resize + augment + batch), 256 × 128 default.

Writes a folder of synthetic JPEGs (128 × 64, the native Market-1501 size, so every image is
resized) to a temporary folder, then times :func:`reid_tf.data.pipeline.make_training_dataset`
with a PK sampler (P = 16, K = 4) and the chosen augmentation recipe, once reading every image
from disk and once from the in-memory image cache (a second epoch with ``cache_images``). The
first batch of each run is a warm-up and is not timed. Prints ONE JSON line.

Usage: ``python benchmarks/bench_pipeline.py [--recipe flipreid] [--steps 8] [--images 1024]
[--height 256 --width 128] [--parallel N]``
"""
import argparse
import json
import os
import tempfile
import sys
import time

# This checkout's reid_tf, not the one the virtual environment's editable install points to.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reid_tf  # noqa: E402,F401  (project convention: first import)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reid_tf.data.augmentation import RECIPES, build_augmentation
from reid_tf.data.images import ImageCache
from reid_tf.data.pipeline import make_label_map, make_training_dataset
from reid_tf.data.sampler import PKSampler

HEIGHT, WIDTH = 256, 128
P, K = 16, 4


def write_synthetic_jpegs(folder, count, images_per_identity=8, seed=0):
    """``count`` smooth random 128 × 64 JPEGs; returns the training table."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        small = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (64, 128), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(-12, 13, image.shape)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        identity = index // images_per_identity
        path = os.path.join(folder, f"{identity:04d}_c1s1_{index:06d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows.append((path, identity, 1, "visible", "train"))
    return pd.DataFrame(rows, columns=["image_file_path", "identity_ID", "camera_ID",
                                       "modality", "split"])


def time_epoch(dataset):
    """Images per second over all batches but the first (warm-up)."""
    iterator = iter(dataset)
    next(iterator)
    count, start = 0, time.perf_counter()
    for images, _ in iterator:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start), count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="flipreid", choices=RECIPES)
    parser.add_argument("--steps", type=int, default=8, help="timed batches + 1 warm-up")
    parser.add_argument("--images", type=int, default=1024, help="synthetic JPEGs to write")
    parser.add_argument("--parallel", type=int, default=None,
                        help="num_parallel_calls (default tf.data.AUTOTUNE)")
    parser.add_argument("--height", type=int, default=HEIGHT)
    parser.add_argument("--width", type=int, default=WIDTH)
    args = parser.parse_args()
    height, width = args.height, args.width
    with tempfile.TemporaryDirectory(prefix="reid_tf_bench_pipeline_") as folder:
        table = write_synthetic_jpegs(folder, args.images)
        sampler = PKSampler.from_dataframe(table, P, K, steps_per_epoch=args.steps + 1, seed=0)
        label_map = make_label_map(table)
        augmentation = build_augmentation(args.recipe, height, width)

        def dataset(epoch, cache):
            return make_training_dataset(table, sampler, height, width, augmentation, label_map,
                                         seed=0, epoch_index=epoch,
                                         num_parallel_calls=args.parallel, cache_images=cache)

        from_disk, timed = time_epoch(dataset(0, False))
        cache = ImageCache()
        for _ in dataset(1, cache):  # fill the cache
            pass
        from_cache, _ = time_epoch(dataset(2, cache))
    print(json.dumps({
        "benchmark": "training_pipeline",
        "recipe": args.recipe,
        "image_size": [height, width],
        "parallel": args.parallel,
        "batch_size": P * K,
        "timed_images": timed,
        "cpu_count": os.cpu_count(),
        "images_per_second": round(from_disk, 1),
        "images_per_second_cached": round(from_cache, 1),
    }))


if __name__ == "__main__":
    main()
