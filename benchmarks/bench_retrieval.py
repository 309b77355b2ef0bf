"""Retrieval at scale: exact CMC/mAP from features with a 10^6 gallery, and k-reciprocal
re-ranking of an MSMT17-sized problem in bounded memory.

Cases (one per process, so that each peak-memory figure is its own):

* ``gallery_1m``: 10,000 queries x 1,000,000 gallery items x 256-d clustered float32 features,
  :func:`reid_tf.evaluation.cmc_map_from_features` (cosine). Also measures, in the same run,
  this machine's float32 GEMM rate (2048^3 and the evaluation's own shape) and one pass over a
  distance chunk, and states the floor ``2*q*g*d / GEMM rate + one pass over every row``.
* ``dense_100k``: ``cmc_map(pairwise_distance(...))`` and ``cmc_map_from_features`` side by
  side on 10,000 x 100,000 (the full matrix, 4 GB, fits here).
* ``msmt``: 11,659 x 82,161 x 512-d, :func:`reid_tf.evaluation.reranking_sparse.
  rerank_cmc_map_from_features`; the dense re-ranking's (q+g)^2 float32 matrices are stated,
  not built.
* ``market``: dense ``re_ranking`` vs the sparse one on 3,368 x 15,913 x 256-d (mAP/rank-1).

Peak memory is ``VmHWM - VmRSS`` after the features exist (the peak is reset with
``/proc/self/clear_refs`` first), i.e. beyond the features. Prints one JSON line per case.

Usage: ``python benchmarks/bench_retrieval.py --case gallery_1m`` (run under
``flock /tmp/reid_cpu.lock``).
"""
import argparse
import json
import os
import platform
import sys
import time

# The project from this checkout (not whatever reid_tf the environment points at).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reid_tf  # noqa: E402,F401  (project convention: first import)
import numpy as np  # noqa: E402

from reid_tf.evaluation import (chunked, cmc_map, cmc_map_from_features,  # noqa: E402
                                pairwise_distance)


def _status(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def cpu_model():
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def clustered(num_identities, counts, dims, seed, spread=0.6):
    """Float32 features around one random centre per identity; ``counts`` rows per side."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_identities, dims), dtype=np.float32)
    sides = []
    for count in counts:
        pids = rng.integers(0, num_identities, count)
        cams = rng.integers(0, 6, count)
        feats = rng.standard_normal((count, dims), dtype=np.float32)
        feats *= np.float32(spread)
        for start in range(0, count, 1 << 16):
            feats[start:start + (1 << 16)] += centres[pids[start:start + (1 << 16)]]
        sides.append((feats, pids, cams))
    return sides


def gemm_rate(m, k, n, repeats=3):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * m * k * n / best


def _timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def case_gallery_1m(args):
    (q, qp, qc), (g, gp, gc) = clustered(20000, (args.queries, args.gallery), 256, 0,
                                         spread=args.spread)
    dims = q.shape[1]
    rate_square = gemm_rate(2048, 2048, 2048)
    chunk = chunked.chunk_rows_for(g.shape[0], chunked.DEFAULT_MEMORY_BUDGET)
    rate_eval = gemm_rate(chunk, dims, g.shape[0], repeats=2)
    block = np.random.default_rng(1).random((chunk, g.shape[0]), dtype=np.float32)
    pass_time = min(_timed(lambda: block.max(axis=1)) for _ in range(3)) / chunk
    del block
    timings = {"distance": 0.0}
    original = chunked.distance_chunk

    def timed_chunk(*a):
        start = time.perf_counter()
        out = original(*a)
        timings["distance"] += time.perf_counter() - start
        return out

    chunked.distance_chunk = timed_chunk
    base = _status("VmRSS")
    reset_peak()
    start = time.perf_counter()
    result = cmc_map_from_features(q, g, qp, gp, qc, gc, metric="cosine")
    wall = time.perf_counter() - start
    peak = _status("VmHWM") - base
    chunked.distance_chunk = original
    flops = 2.0 * q.shape[0] * g.shape[0] * dims
    floor = flops / max(rate_square, rate_eval) + pass_time * q.shape[0]
    return {"wall_s": wall, "peak_beyond_features_gb": peak / 1e9,
            "distance_s": timings["distance"], "ranking_s": wall - timings["distance"],
            "gemm_gflops_2048": rate_square / 1e9, "gemm_gflops_eval_shape": rate_eval / 1e9,
            "row_pass_ms": pass_time * 1e3, "floor_s": floor, "wall_over_floor": wall / floor,
            "features_gb": (q.nbytes + g.nbytes) / 1e9, "chunk_rows": chunk,
            "mAP": result["mAP"], "rank1": float(result["cmc"][0])}


def case_dense_100k(args):
    (q, qp, qc), (g, gp, gc) = clustered(20000, (args.queries, args.gallery), 256, 0,
                                         spread=args.spread)
    base = _status("VmRSS")
    reset_peak()
    start = time.perf_counter()
    chunked_result = cmc_map_from_features(q, g, qp, gp, qc, gc, metric="cosine")
    chunked_wall = time.perf_counter() - start
    chunked_peak = _status("VmHWM") - base
    reset_peak()
    start = time.perf_counter()
    distmat = pairwise_distance(q, g, metric="cosine")
    dense_result = cmc_map(distmat, qp, gp, qc, gc)
    dense_wall = time.perf_counter() - start
    del distmat
    dense_peak = _status("VmHWM") - base
    return {"chunked_wall_s": chunked_wall, "chunked_peak_gb": chunked_peak / 1e9,
            "dense_wall_s": dense_wall, "dense_peak_gb": dense_peak / 1e9,
            "mAP_chunked": chunked_result["mAP"], "mAP_dense": dense_result["mAP"],
            "max_cmc_difference": float(np.abs(chunked_result["cmc"]
                                               - dense_result["cmc"]).max())}


def case_msmt(args):
    from reid_tf.evaluation import reranking_sparse
    (q, qp, qc), (g, gp, gc) = clustered(3060, (args.queries, args.gallery), 512, 0,
                                         spread=args.spread)
    num_items = q.shape[0] + g.shape[0]
    base = _status("VmRSS")
    reset_peak()
    start = time.perf_counter()
    result = reranking_sparse.rerank_cmc_map_from_features(q, g, qp, gp, qc, gc,
                                                           metric="cosine")
    wall = time.perf_counter() - start
    peak = _status("VmHWM") - base
    return {"wall_s": wall, "peak_beyond_features_gb": peak / 1e9,
            "dense_matrix_gb": 4.0 * num_items ** 2 / 1e9,
            "dense_estimate_gb": reranking_sparse.dense_re_ranking_bytes(
                q.shape[0], g.shape[0]) / 1e9,
            "mAP": result["mAP"], "rank1": float(result["cmc"][0])}


def case_market(args):
    from reid_tf.evaluation import re_ranking, reranking_sparse
    (q, qp, qc), (g, gp, gc) = clustered(750, (args.queries, args.gallery), 256, 0,
                                         spread=args.spread)
    out = {}
    base = _status("VmRSS")
    reset_peak()
    start = time.perf_counter()
    dense = cmc_map(re_ranking(pairwise_distance(q, g, "cosine"),
                               pairwise_distance(q, q, "cosine"),
                               pairwise_distance(g, g, "cosine")), qp, gp, qc, gc)
    out.update(dense_wall_s=time.perf_counter() - start,
               dense_peak_gb=(_status("VmHWM") - base) / 1e9, dense_mAP=dense["mAP"],
               dense_rank1=float(dense["cmc"][0]))
    reset_peak()
    start = time.perf_counter()
    sparse = reranking_sparse.rerank_cmc_map_from_features(q, g, qp, gp, qc, gc,
                                                           metric="cosine")
    out.update(sparse_wall_s=time.perf_counter() - start,
               sparse_peak_gb=(_status("VmHWM") - base) / 1e9, sparse_mAP=sparse["mAP"],
               sparse_rank1=float(sparse["cmc"][0]))
    plain = cmc_map_from_features(q, g, qp, gp, qc, gc, metric="cosine")
    out.update(plain_mAP=plain["mAP"], plain_rank1=float(plain["cmc"][0]))
    return out


CASES = {"gallery_1m": (case_gallery_1m, 10000, 1000000, 1.5),
         "dense_100k": (case_dense_100k, 10000, 100000, 1.5),
         "msmt": (case_msmt, 11659, 82161, 1.2),
         "market": (case_market, 3368, 15913, 2.0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--gallery", type=int, default=None)
    parser.add_argument("--spread", type=float, default=None,
                        help="feature noise around the identity centres")
    args = parser.parse_args()
    function, queries, gallery, spread = CASES[args.case]
    args.queries = args.queries or queries
    args.gallery = args.gallery or gallery
    args.spread = args.spread or spread
    record = {"case": args.case, "queries": args.queries, "gallery": args.gallery,
              "cpu": cpu_model(), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    record.update(function(args))
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
