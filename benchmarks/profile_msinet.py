"""Where the time goes: TensorFlow-profiler op breakdown of the MSINet train/inference/search step.

Builds the same step as ``bench_train_msinet.py`` (``--mode train``),
``bench_inference_msinet.py`` (``--mode inference``) or ``bench_search.py`` (``--mode search``),
runs it a few times untimed, then records ``--steps`` calls with ``tf.profiler`` and reads the
trace (``*.xplane.pb``) back: every TensorFlow op event counts its kernel time towards its op
type (``_MklNativeConv2D``, ``FusedBatchNormGradV3``, ``Mul``...) and towards its layer (the
graph-name component after the model name, e.g. ``cells_0_conv2b_1_bn``). Op time is summed
over all threads, so with two cores it can exceed the wall time.

Prints a readable table and ONE final JSON line (``--top`` op types and layers with seconds
per step and their share of the op time). ``--logdir`` keeps the trace for TensorBoard.

Usage: ``python benchmarks/profile_msinet.py --mode train [--mixed_precision mixed_bfloat16]``
"""
import argparse
import collections
import glob
import os
import shutil
import tempfile
import time

from common import add_common_arguments, configure, emit, load_average, machine

# Events of the executor itself (not kernels), left out of the op breakdown.
_NOT_KERNELS = ("ExecutorState::Process", "KernelAndDeviceFunc::Run")


def kernel_events(logdir):
    """``(op_name, op_type, duration_ps)`` of every TF kernel event in the xplane file(s)
    under ``logdir`` (executor events and function calls left out)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"No *.xplane.pb trace was written under {logdir}.")
    for path in files:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            metadata = plane.event_metadata
            for line in plane.lines:
                for event in line.events:
                    name = metadata[event.metadata_id].name
                    if ":" not in name or name.startswith(_NOT_KERNELS) or name.startswith("$"):
                        continue
                    op_name, op_type = name.rsplit(":", 1)
                    if op_type.startswith("__inference") or op_type in ("Run", "Process") \
                            or " " in op_type:
                        continue
                    yield op_name, op_type, event.duration_ps


def read_trace(logdir, steps):
    """``(by_type, by_layer)`` Counters of kernel seconds per step from the xplane file(s)."""
    by_type, by_layer = collections.Counter(), collections.Counter()
    for op_name, op_type, duration_ps in kernel_events(logdir):
        seconds = duration_ps / 1e12 / steps
        by_type[op_type] += seconds
        by_layer[_layer_of(op_name)] += seconds
    return by_type, by_layer


def _layer_of(op_name):
    parts = [part for part in op_name.split("/") if part]
    if parts and parts[0] in ("gradient_tape",):
        parts = parts[1:]
    # "<model>/<layer>/..." -> layer; optimiser and loss ops keep their first component.
    if len(parts) >= 2 and parts[0].endswith(("_training", "_inference")):
        return parts[1]
    return parts[0] if parts else op_name


def build(mode, args):
    """A zero-argument callable running one step of ``mode``."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    if mode == "train":
        import bench_train_msinet
        args.genotype, args.num_classes, args.height, args.width = "msmt", 751, 256, 128
        folder = tempfile.mkdtemp(prefix="reid_tf_profile_")
        step, images, labels = bench_train_msinet.build_step(args, folder)
        return lambda: step(images, labels)["total"]
    if mode == "inference":
        from reid_tf.evaluation.evaluator import FeatureExtractor
        from reid_tf.models.msinet import build_msinet_models
        models = build_msinet_models("msmt", 751)
        extractor = FeatureExtractor(models.inference_model, 256, 128, args.batch_size)
        images = tf.constant(rng.standard_normal((args.batch_size, 256, 128, 3),
                                                 dtype=np.float32))
        return lambda: extractor._predict(images, 0)  # noqa: SLF001
    from nas.bilevel import BilevelStep
    from nas.spaces.msi import MsiSearchSpace
    from reid_tf.training.optimizers import TorchAdam, TorchSGD
    space = MsiSearchSpace.without_data(624, 833)
    weight_optimizer = TorchSGD(learning_rate=0.025, momentum=0.9, weight_decay_l2=5e-4)
    arch_optimizer = TorchAdam(learning_rate=0.002, beta_1=0.5, beta_2=0.999, epsilon=1e-8,
                               weight_decay_l2=1e-3)
    weight_optimizer.build(space.weight_variables)
    arch_optimizer.build(space.arch_variables)
    step = BilevelStep(space, weight_optimizer, arch_optimizer)
    images = [tf.constant(rng.standard_normal((args.batch_size, 256, 128, 3), dtype=np.float32))
              for _ in range(2)]
    labels = tf.constant(np.repeat(np.arange(args.batch_size // 4), 4).astype(np.int32))
    return lambda: step(images[0], labels, images[1], labels)["loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("train", "inference", "search"), default="train")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="default 32 (train, search) or 128 (inference)")
    parser.add_argument("--top", type=int, default=15, help="rows of each table")
    parser.add_argument("--logdir", default="", help="keep the trace here (default: temporary)")
    add_common_arguments(parser, repeats=1, steps=2)
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 128 if args.mode == "inference" else 32
    configure(args)
    import tensorflow as tf

    step = build(args.mode, args)
    for _ in range(args.warmup):
        tf.nest.map_structure(lambda tensor: tensor.numpy(), step())
    logdir = args.logdir or tempfile.mkdtemp(prefix="reid_tf_trace_")
    load_before = load_average()
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        tf.nest.map_structure(lambda tensor: tensor.numpy(), step())
    wall = (time.perf_counter() - start) / args.steps
    tf.profiler.experimental.stop()
    by_type, by_layer = read_trace(logdir, args.steps)
    if not args.logdir:
        shutil.rmtree(logdir, ignore_errors=True)
    total = sum(by_type.values())
    print(f"{args.mode} ({args.mixed_precision}): {wall:.3f} s wall per step, "
          f"{total:.3f} s of op time (all threads)")
    for title, counter in (("op type", by_type), ("layer", by_layer)):
        print(f"\n{title:<48} seconds  share")
        for name, seconds in counter.most_common(args.top):
            print(f"{name[:48]:<48} {seconds:7.3f}  {100 * seconds / total:5.1f}%")
    emit({
        "benchmark": f"profile_{args.mode}",
        "policy": args.mixed_precision,
        "batch_size": args.batch_size,
        "wall_seconds_per_step": round(wall, 4),
        "op_seconds_per_step": round(total, 4),
        "load_before": load_before,
        "load_after": load_average(),
        "op_types": [[name, round(seconds, 4), round(seconds / total, 4)]
                     for name, seconds in by_type.most_common(args.top)],
        "layers": [[name, round(seconds, 4), round(seconds / total, 4)]
                   for name, seconds in by_layer.most_common(args.top)],
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
