"""Helpers shared by the benchmark scripts: machine description, threading, policy, timing.

Every benchmark prints ONE JSON line (``emit``) with its figure, the best and the median of
several timed repeats, the load average before and after (other processes on a shared machine
make timings slower, never faster: the best repeat is the figure to compare) and the machine.
"""
import json
import os
import platform
import statistics
import sys
import time

# The benchmarks import ``nas`` (the search) from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import reid_tf  # noqa: E402,F401  (project convention: first import; selects tf-keras)

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def add_common_arguments(parser, repeats=5, steps=2):
    """``--repeats``, ``--steps``, ``--warmup``, ``--mixed_precision``, ``--jit_compile``,
    ``--intra_op_threads``, ``--inter_op_threads`` (0: TensorFlow's default)."""
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="timed repeats (best and median are reported)")
    parser.add_argument("--steps", type=int, default=steps, help="calls timed per repeat")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls first (the first one traces)")
    parser.add_argument("--mixed_precision", default="float32", choices=POLICIES,
                        help="Keras dtype policy")
    parser.add_argument("--jit_compile", action="store_true", help="XLA-compile the step")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="tf.config.threading intra-op threads (0: default)")
    parser.add_argument("--inter_op_threads", type=int, default=0,
                        help="tf.config.threading inter-op threads (0: default)")
    return parser


def configure(args):
    """Apply the threading and dtype-policy arguments (before any model is built)."""
    import tensorflow as tf
    import tf_keras as keras

    for name in ("repeats", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}={getattr(args, name)}: must be >= 1.")
    if args.warmup < 1:
        raise SystemExit(f"--warmup={args.warmup}: must be >= 1 (the first call traces).")
    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    keras.mixed_precision.set_global_policy(args.mixed_precision)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return "", []
    model = ""
    flags = []
    for line in text.splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].split()
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    return model, [flag for flag in wanted if flag in flags]


def machine():
    """A short description of this machine and TensorFlow build (for the tables)."""
    import tensorflow as tf

    model, flags = _cpu_flags()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False")
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "isa": flags,
        "tensorflow": tf.__version__,
        "onednn": onednn,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
    }


def load_average():
    """The 1-minute load average (other processes competing for the CPU)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def time_calls(function, repeats, steps, warmup, block=None):
    """Run ``function()`` ``warmup`` times, then ``repeats`` × ``steps`` timed calls.

    ``block(result)`` waits for the result (default: ``.numpy()`` on every tensor in it).
    Returns a dict: ``seconds`` (wall seconds per call for each repeat), ``best``, ``median``,
    ``cpu_seconds`` (process CPU time per call, best repeat), ``first_call_seconds`` (the
    trace), ``load_before``, ``load_after``.
    """
    import tensorflow as tf

    def wait(result):
        if block is not None:
            return block(result)
        for tensor in tf.nest.flatten(result):
            if hasattr(tensor, "numpy"):
                tensor.numpy()
        return None

    load_before = load_average()
    start = time.perf_counter()
    wait(function())
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        wait(function())
    seconds, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            wait(function())
        seconds.append((time.perf_counter() - wall_start) / steps)
        cpu.append((time.process_time() - cpu_start) / steps)
    return {
        "seconds": [round(value, 4) for value in seconds],
        "best": min(seconds),
        "median": statistics.median(seconds),
        "cpu_seconds": round(min(cpu), 4),
        "first_call_seconds": round(first, 2),
        "load_before": load_before,
        "load_after": load_average(),
    }


def rate_fields(timing, items, unit="images_per_second"):
    """``{unit: best rate, unit_median: median rate, seconds_best, seconds_median, ...}``."""
    return {
        unit: round(items / timing["best"], 2),
        f"{unit}_median": round(items / timing["median"], 2),
        "seconds_best": round(timing["best"], 4),
        "seconds_median": round(timing["median"], 4),
        "seconds_all": timing["seconds"],
        "cpu_seconds_per_call": timing["cpu_seconds"],
        "first_call_seconds": timing["first_call_seconds"],
        "load_before": timing["load_before"],
        "load_after": timing["load_after"],
    }


def emit(record):
    """Print ``record`` as one JSON line (the benchmark's result)."""
    print(json.dumps(record), flush=True)
    return record
