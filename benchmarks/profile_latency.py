"""Batch-1 latency of the TensorFlow paths of one inference model: where the ~31 ms go.

Times, on one fixed random batch at 256 x 128 (median / p95 ms of ``--repeats`` single calls
after ``--warmup`` untimed ones, the result fetched with ``.numpy()``; the paths' calls are
interleaved, one of each per round, so that a shared machine's changing load weighs on all):

* ``predict``: ``model.predict(x, verbose=0)`` (Keras builds a dataset and a predict loop on
  every call);
* ``eager``: ``model(x, training=False)`` (every layer dispatched op by op from Python);
* ``function_dynamic``: a ``tf.function`` with ``input_signature`` ``[None, H, W, 3]``: the
  path of the evaluation's extractor and of the exported serving function;
* ``function_batch1``: the same with the batch fixed to 1 in the signature (static shapes);
* ``concrete``: the concrete function of ``function_dynamic`` called directly (no Python
  argument binding of ``tf.function``);
* ``frozen``: that concrete function with its variables folded into constants
  (``convert_variables_to_constants_v2``: no ReadVariableOp, Grappler constant-folds);
* ``xla``: ``tf.function(jit_compile=True)`` (only when asked for in ``--paths``);
* ``savedmodel``: the ``serving_default`` signature of the exported SavedModel;
* ``empty_function``: a ``tf.function`` returning ``x[:, 0, 0, :]`` (the fixed cost of one
  ``tf.function`` call and a result fetch, whatever the model).

Then profiles ``function_dynamic`` with ``tf.profiler`` (see ``profile_msinet.read_trace``):
the kernel time per call summed over threads, the number of kernel launches per call, and the
op types that take the most. Prints a table and ONE JSON line.

Usage: ``python benchmarks/profile_latency.py [--model msinet|resnet50] [--repeats 30]
[--paths predict,eager,...] [--inter_op_threads 1]``
"""
import argparse
import collections
import shutil
import tempfile
import time

from common import emit, load_average, machine

import numpy as np

PATHS = ("predict", "eager", "function_dynamic", "function_batch1", "concrete", "frozen", "xla",
         "savedmodel", "empty_function")
# XLA on the CPU took ~37 s to compile MSINet and ran ~10x slower than the graph: asked for only.
DEFAULT_PATHS = tuple(path for path in PATHS if path != "xla")


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="msinet", choices=("msinet", "resnet50"))
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help=f"any of {', '.join(PATHS)} (default: all but xla)")
    parser.add_argument("--intra_op_threads", type=int, default=2)
    parser.add_argument("--inter_op_threads", type=int, default=1)
    parser.add_argument("--profile_calls", type=int, default=5,
                        help="calls recorded by tf.profiler (0: no profile)")
    args = parser.parse_args()
    args.paths = [path for path in args.paths.split(",") if path]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"error: --paths: unknown {unknown}; expected {', '.join(PATHS)}")
    if args.repeats < 2 or args.warmup < 1 or args.batch_size < 1:
        raise SystemExit("error: --repeats >= 2, --warmup >= 1, --batch_size >= 1")
    return args


def _graph_ops(concrete):
    """Counter of the op types of a concrete function's graph (its nested functions too)."""
    counter = collections.Counter(op.type for op in concrete.graph.get_operations())
    for function in concrete.graph.as_graph_def().library.function:
        counter.update(node.op for node in function.node_def)
    return counter


def main():
    args = _arguments()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    from profile_msinet import read_trace
    from reid_tf import export

    shape = (256, 128, 3)
    if args.model == "msinet":
        from reid_tf.models.msinet import build_msinet_models
        model = build_msinet_models("msmt", 751, input_shape=shape).inference_model
    else:
        from reid_tf.models.flipreid import build_flipreid
        model = build_flipreid("resnet50", shape, 751).inference_model
    images = np.random.default_rng(0).standard_normal((args.batch_size,) + shape,
                                                      dtype=np.float32)
    tensor = tf.constant(images)

    def forward(x):
        return export._features(model(x, training=False))  # noqa: SLF001 (the served output)

    dynamic = tf.function(forward, input_signature=[tf.TensorSpec((None,) + shape, tf.float32)])
    concrete = dynamic.get_concrete_function()
    calls = {
        "predict": lambda: np.concatenate(
            [np.asarray(out) for out in tf.nest.flatten(model.predict(images, verbose=0))], -1),
        "eager": lambda: forward(tensor).numpy(),
        "function_dynamic": lambda: dynamic(tensor).numpy(),
        "concrete": lambda: concrete(tensor).numpy(),
    }
    if "function_batch1" in args.paths:
        fixed = tf.function(forward, input_signature=[
            tf.TensorSpec((args.batch_size,) + shape, tf.float32)])
        calls["function_batch1"] = lambda: fixed(tensor).numpy()
    if "frozen" in args.paths:
        frozen = convert_variables_to_constants_v2(concrete)
        calls["frozen"] = lambda: frozen(tensor)[0].numpy()
    if "xla" in args.paths:
        compiled = tf.function(forward, jit_compile=True, input_signature=[
            tf.TensorSpec((None,) + shape, tf.float32)])
        calls["xla"] = lambda: compiled(tensor).numpy()
    folder = None
    if "savedmodel" in args.paths:
        folder = tempfile.mkdtemp(prefix="profile_latency_")
        signature = tf.saved_model.load(export.export_inference_model(
            model, folder, "savedmodel")).signatures["serving_default"]
        calls["savedmodel"] = lambda: signature(images=tensor)["features"].numpy()
    def corner(x):
        return x[:, 0, 0, :]

    empty = tf.function(corner, input_signature=[tf.TensorSpec((None,) + shape, tf.float32)])
    calls["empty_function"] = lambda: empty(tensor).numpy()

    reference = dynamic(tensor).numpy()
    rows = {}
    load_before = load_average()
    for path in args.paths:
        first = time.perf_counter()
        output = calls[path]()
        first = time.perf_counter() - first
        if path != "empty_function":
            difference = float(np.max(np.abs(np.asarray(output) - reference)))
        else:
            difference = None
        for _ in range(args.warmup):
            calls[path]()
        rows[path] = {"path": path, "first_call_s": round(first, 2),
                      "max_abs_difference": difference}
    # Interleaved: one call of each path per round, so that the load of a shared machine
    # changing over the run weighs on every path alike.
    times = {path: [] for path in args.paths}
    for _ in range(args.repeats):
        for path in args.paths:
            start = time.perf_counter()
            calls[path]()
            times[path].append(1000 * (time.perf_counter() - start))
    for path in args.paths:
        rows[path].update(median_ms=round(float(np.median(times[path])), 2),
                          p95_ms=round(float(np.percentile(times[path], 95)), 2))
        print(f"# {path}: {rows[path]['median_ms']} ms median, {rows[path]['p95_ms']} ms p95",
              flush=True)
    rows = list(rows.values())

    profile = {}
    if args.profile_calls:
        logdir = tempfile.mkdtemp(prefix="profile_latency_trace_")
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(args.profile_calls):
            dynamic(tensor).numpy()
        wall = (time.perf_counter() - start) / args.profile_calls
        tf.profiler.experimental.stop()
        by_type, _ = read_trace(logdir, args.profile_calls)
        launches = _kernel_launches(logdir, args.profile_calls)
        shutil.rmtree(logdir, ignore_errors=True)
        total = sum(by_type.values())
        profile = {"wall_ms_per_call_profiled": round(1000 * wall, 2),
                   "kernel_ms_per_call_all_threads": round(1000 * total, 2),
                   "kernel_launches_per_call": launches,
                   "top_op_types_ms": [[name, round(1000 * seconds, 2)]
                                       for name, seconds in by_type.most_common(10)]}
    graph = _graph_ops(concrete)
    print("\n| path | median ms | p95 ms | first call s | max abs diff |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['median_ms']} | {row['p95_ms']} | {row['first_call_s']} "
              f"| {row['max_abs_difference']} |")
    emit({"benchmark": "profile_latency", "model": args.model, "batch_size": args.batch_size,
          "threads": [args.intra_op_threads, args.inter_op_threads], "rows": rows,
          "graph_ops": sum(graph.values()),
          "graph_top_ops": graph.most_common(8), **profile, "load_before": load_before,
          "load_after": load_average(), "machine": machine()})
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def _kernel_launches(logdir, calls):
    """Kernel events per call in the trace (the TF op events ``read_trace`` counts)."""
    from profile_msinet import kernel_events

    return round(sum(1 for _ in kernel_events(logdir)) / calls)


if __name__ == "__main__":
    main()
