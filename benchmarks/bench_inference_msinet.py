"""MSINet inference throughput: batch 128 at 256 × 128, the evaluation feature extractor's forward.

Times the traced forward pass that :class:`reid_tf.evaluation.evaluator.FeatureExtractor` runs
(the 'msmt' MSINet inference model in inference mode → the 768-d float32 features) on a fixed
random batch, with the dtype policy of ``--mixed_precision``. Image decoding is not included
(see ``bench_pipeline.py``). Prints ONE JSON line: images per second of the best repeat and
the median, the reference PyTorch figure (16 img/s) and the target (64 img/s).

Usage: ``python benchmarks/bench_inference_msinet.py [--mixed_precision mixed_bfloat16]
[--batch_size 128] [--repeats 5]``
"""
import argparse

from common import add_common_arguments, configure, emit, machine, rate_fields, time_calls

REFERENCE_IMAGES_PER_SECOND = 16.0
TARGET_IMAGES_PER_SECOND = 64.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--genotype", default="msmt")
    add_common_arguments(parser, repeats=5, steps=1)
    args = parser.parse_args()
    if args.batch_size < 1:
        raise SystemExit(f"--batch_size={args.batch_size}: must be >= 1.")
    configure(args)

    import numpy as np
    import tensorflow as tf

    from reid_tf.evaluation.evaluator import FeatureExtractor
    from reid_tf.models.msinet import build_msinet_models

    models = build_msinet_models(args.genotype, 751, input_shape=(args.height, args.width, 3))
    extractor = FeatureExtractor(models.inference_model, args.height, args.width,
                                 batch_size=args.batch_size)
    forward = extractor._predict  # noqa: SLF001 (the traced forward the extractor runs)
    if args.jit_compile:
        forward = tf.function(extractor._forward, jit_compile=True)  # noqa: SLF001
    images = tf.constant(np.random.default_rng(0).standard_normal(
        (args.batch_size, args.height, args.width, 3), dtype=np.float32))
    timing = time_calls(lambda: forward(images, 0), args.repeats, args.steps, args.warmup)
    features = forward(images, 0)
    emit({
        "benchmark": "msinet_inference",
        "policy": args.mixed_precision,
        "jit_compile": args.jit_compile,
        "batch_size": args.batch_size,
        "image_size": [args.height, args.width],
        "feature_shape": list(features.shape),
        "feature_dtype": features.dtype.name,
        **rate_fields(timing, args.batch_size),
        "reference_images_per_second": REFERENCE_IMAGES_PER_SECOND,
        "target_images_per_second": TARGET_IMAGES_PER_SECOND,
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
