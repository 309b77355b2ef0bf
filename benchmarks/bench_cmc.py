"""Benchmark of :func:`reid_tf.evaluation.cmc_map` on a Market-1501-sized problem.

3368 queries × 15913 gallery items (float32 distances), Market-like identities and cameras:
750 test identities over 6 cameras, every query identity present in the gallery, plus
distractors (identity 0). Prints ONE JSON line with the best of a few timed runs; the
reference (per-query Python loop of the original implementations) takes about 50 s.

Usage: ``python benchmarks/bench_cmc.py [--repeats N] [--threads T]``
"""
import argparse
import json
import time

import reid_tf  # noqa: F401  (project convention: first import)
import numpy as np

from reid_tf.evaluation import cmc_map

NUM_QUERY = 3368
NUM_GALLERY = 15913
NUM_IDENTITIES = 750
NUM_CAMERAS = 6
NUM_DISTRACTORS = 2798


def market_like_problem(seed=0):
    """Random float32 distances with Market-like identity/camera arrays."""
    rng = np.random.default_rng(seed)
    identities = np.arange(1, NUM_IDENTITIES + 1)
    q_pids = np.concatenate([identities, rng.choice(identities, NUM_QUERY - NUM_IDENTITIES)])
    g_pids = np.concatenate([
        identities,
        rng.choice(identities, NUM_GALLERY - NUM_IDENTITIES - NUM_DISTRACTORS),
        np.zeros(NUM_DISTRACTORS, dtype=identities.dtype),
    ])
    q_cams = rng.integers(0, NUM_CAMERAS, NUM_QUERY)
    g_cams = rng.integers(0, NUM_CAMERAS, NUM_GALLERY)
    # Cosine-like distances in [0, 1.3): true matches closer on average, as for a trained model.
    distmat = rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32)
    distmat += np.float32(0.3) * (q_pids[:, None] != g_pids[None, :])
    return distmat, q_pids, g_pids, q_cams, g_cams


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is printed)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default min(2, cpus))")
    args = parser.parse_args()
    distmat, q_pids, g_pids, q_cams, g_cams = market_like_problem()
    timings = []
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        result = cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50,
                         num_threads=args.threads)
        timings.append(time.perf_counter() - start)
    print(json.dumps({
        "benchmark": "cmc_map",
        "queries": NUM_QUERY,
        "gallery": NUM_GALLERY,
        "seconds": round(min(timings), 3),
        "all_seconds": [round(t, 3) for t in timings],
        "reference_seconds": 50.0,
        "rank1": round(float(result["cmc"][0]), 6),
        "mAP": round(result["mAP"], 6),
    }))


if __name__ == "__main__":
    main()
