"""Latency of the inference models at 256 x 128: reid-tf (Keras tf.function, SavedModel,
ONNX Runtime, LiteRT float32/float16/int8) side by side with the reference PyTorch MSINet
(eager, torch.jit.trace, torch.compile) in the same run.

Models: ``msinet`` (reid_tf's MSINet, genotype msmt, 768-d features; the reference
``msinet_x1_0`` from ``--reference_path`` for the PyTorch rows) and ``resnet50`` (reid_tf's
FlipReID structure on ResNet-50: global + 2 regional GeM branches; no PyTorch peer).
Every framework gets ``--threads`` intra-op threads (TensorFlow intra 2 / inter 1, ONNX
Runtime intra_op_num_threads, LiteRT num_threads, torch.set_num_threads). Each row: median and
p95 of ``--repeats`` single calls in ms, after ``--warmup`` untimed calls (the traces and
compilations). torch.compile is skipped with its error when it fails, and not timed when its
first call takes longer than ``--compile_timeout`` s. Each reid-tf row also records the largest
absolute difference of its features from the Keras model's (``--reuse_exports`` takes the
exports of an earlier run with the same ``--seed``: the difference shows they hold the same
weights). Prints one JSON line per row and a markdown table.

Usage: ``python benchmarks/bench_latency.py --models msinet,resnet50 --batch_sizes 1,32
--repeats 30,5``
"""
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
from common import ROOT, emit, load_average, machine  # noqa: E402,F401

import numpy as np  # noqa: E402

REFERENCE_PATH = "/work/refs/MSINet"


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="msinet,resnet50")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--repeats", default="30,5",
                        help="timed calls per batch size (one value, or one per batch size)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frameworks", default="keras,savedmodel,onnxruntime,litert_float32,"
                        "litert_float16,litert_int8,torch_eager,torch_jit,torch_compile")
    parser.add_argument("--compile_timeout", type=float, default=120.0)
    parser.add_argument("--reference_path", default=REFERENCE_PATH)
    parser.add_argument("--work_folder", default="", help="exports go here (default: a temp dir)")
    parser.add_argument("--reuse_exports", action="store_true",
                        help="use the exports already in --work_folder (written by an earlier "
                        "run: the models are built from --seed, so they hold the same weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models' random weights")
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in ("msinet", "resnet50")]
    if unknown:
        raise SystemExit(f"error: --models: unknown {unknown}; expected msinet, resnet50")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    repeats = [int(r) for r in args.repeats.split(",") if r]
    if len(repeats) == 1:
        repeats *= len(args.batch_sizes)
    if len(repeats) != len(args.batch_sizes) or min(repeats) < 2 or min(args.batch_sizes) < 1:
        raise SystemExit("error: --repeats: one value >= 2, or one per --batch_sizes entry")
    args.repeats = dict(zip(args.batch_sizes, repeats))
    args.frameworks = [f for f in args.frameworks.split(",") if f]
    if args.reuse_exports and not args.work_folder:
        raise SystemExit("error: --reuse_exports needs --work_folder (where the exports are)")
    return args


def _time(call, repeats, warmup):
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": round(float(np.median(times)), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2),
            "first_call_s": round(first, 2)}


def _tf_runners(name, model, frameworks, folder, threads, reuse=False):
    """{framework: (make_call(images) -> callable)} of the reid-tf paths; ``reuse``: take the
    files already exported into ``folder``."""
    import tensorflow as tf

    from reid_tf import export

    def exported(export_format, quantization="float32", path=None):
        if reuse and os.path.exists(path):
            return path
        return export.export_inference_model(model, folder, export_format, quantization)

    runners = {}
    serve = export.serving_functions(model)["serving_default"]
    if "keras" in frameworks:
        runners["keras"] = lambda x: (lambda: serve(tf.constant(x))["features"].numpy())
    if "savedmodel" in frameworks:
        path = exported("savedmodel", path=os.path.join(folder, export.SAVEDMODEL_FOLDER))
        signature = tf.saved_model.load(path).signatures["serving_default"]
        runners["savedmodel"] = lambda x: (
            lambda: signature(images=tf.constant(x))["features"].numpy())
    if "onnxruntime" in frameworks:
        import onnxruntime
        path = exported("onnx", path=os.path.join(folder, export.ONNX_FILE))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda x: (lambda: session.run(None, {"images": x})[0])
    for quantization in ("float32", "float16", "int8"):
        key = f"litert_{quantization}"
        if key not in frameworks:
            continue
        path = exported("tflite", quantization,
                        export.tflite_paths(model, folder, quantization)["serving_default"])

        def make(x, path=path):
            interpreter = export.tflite_interpreter(path, num_threads=threads)
            return lambda: export.tflite_features(interpreter, x)
        runners[key] = make
    return runners


def _torch_runners(frameworks, reference_path, threads, compile_timeout, notes):
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, reference_path)
    from reid.models.msinet import msinet_x1_0
    namespace = argparse.Namespace(genotypes="msmt", sam_mode="none", pretrained=False,
                                   source_dataset="market1501")
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the genotype
        network = msinet_x1_0(namespace, 751).eval()
    runners = {}

    def wrap(module):
        def make(x):
            tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

            def call():
                with torch.inference_mode():
                    return module(tensor).numpy()
            return call
        return make
    if "torch_eager" in frameworks:
        runners["torch_eager"] = wrap(network)
    if "torch_jit" in frameworks:
        with torch.inference_mode():
            traced = torch.jit.trace(network, torch.zeros(1, 3, 256, 128), check_trace=False)
        traced = torch.jit.freeze(traced)
        runners["torch_jit"] = wrap(traced)
    if "torch_compile" in frameworks:
        compiled = torch.compile(network)
        probe = torch.zeros(1, 3, 256, 128)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled(probe)
        except Exception as error:  # noqa: BLE001 (reported in the table, not timed)
            notes["torch_compile"] = f"skipped: {type(error).__name__}: {str(error)[:200]}"
        else:
            seconds = time.perf_counter() - start
            if seconds > compile_timeout:
                notes["torch_compile"] = f"skipped: first call {seconds:.0f} s > {compile_timeout} s"
            else:
                runners["torch_compile"] = wrap(compiled)
    return runners


def main():
    args = _arguments()
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    folder = args.work_folder or tempfile.mkdtemp(prefix="bench_latency_")
    rows, notes = [], {}
    import tf_keras as keras
    for name in args.models:
        keras.utils.set_random_seed(args.seed)
        if name == "msinet":
            from reid_tf.models.msinet import build_msinet_models
            model = build_msinet_models("msmt", 751, input_shape=(256, 128, 3)).inference_model
        else:
            from reid_tf.models.flipreid import build_flipreid
            model = build_flipreid("resnet50", (256, 128, 3), 751).inference_model
        model_folder = os.path.join(folder, name)
        os.makedirs(model_folder, exist_ok=True)
        runners = _tf_runners(name, model, args.frameworks, model_folder, args.threads,
                              args.reuse_exports)
        if name == "msinet" and any(f.startswith("torch") for f in args.frameworks):
            runners.update(_torch_runners(args.frameworks, args.reference_path, args.threads,
                                          args.compile_timeout, notes))
        for batch in args.batch_sizes:
            images = np.random.default_rng(0).standard_normal(
                (batch, 256, 128, 3), dtype=np.float32)
            expected = model(images, training=False)
            expected = np.concatenate([np.asarray(part, np.float32)
                                       for part in tf.nest.flatten(expected)], axis=-1)
            for framework, make in runners.items():
                call = make(images)
                timing = _time(call, args.repeats[batch], args.warmup)
                difference = None
                if not framework.startswith("torch"):  # the same weights: the same features
                    difference = float(f"{np.max(np.abs(np.asarray(call()) - expected)):.3g}")
                row = {"benchmark": "latency", "model": name, "framework": framework,
                       "batch_size": batch, "repeats": args.repeats[batch], **timing,
                       "max_abs_difference_vs_keras": difference,
                       "threads": args.threads, "load": load_average()}
                rows.append(emit(row))
    print(f"\n| model | framework | batch | median ms | p95 ms |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['framework']} | {row['batch_size']} | "
              f"{row['median_ms']} | {row['p95_ms']} |")
    for key, note in notes.items():
        print(f"note: {key}: {note}")
    batch1 = [row for row in rows if row["batch_size"] == 1 and row["model"] == "msinet"]
    ours = [row for row in batch1 if not row["framework"].startswith("torch")]
    theirs = [row for row in batch1 if row["framework"].startswith("torch")]
    if ours and theirs:
        best_ours = min(ours, key=lambda row: row["median_ms"])
        best_theirs = min(theirs, key=lambda row: row["median_ms"])
        speedup = best_theirs["median_ms"] / best_ours["median_ms"]
        emit({"benchmark": "latency_target", "fastest_reid_tf": best_ours["framework"],
              "fastest_reid_tf_ms": best_ours["median_ms"],
              "fastest_pytorch": best_theirs["framework"],
              "fastest_pytorch_ms": best_theirs["median_ms"], "speedup": round(speedup, 2),
              "target": 2.0, "met": speedup >= 2.0, "notes": notes, "machine": machine()})


if __name__ == "__main__":
    main()
