"""MSI search step: architecture step + weight step, batch 32 each, at 256 × 128 (float32).

Times one iteration of the search loop as ``python -m nas.search`` runs it for ``n > 0``
(:class:`nas.bilevel.BilevelStep`'s ``full_step``, the reference's first-order step with its
gradient accumulation): forward/backward of the valid batch through the SearchCNN (all four
operations at all 12 interaction points), valid-memory update and Adam step on α, then
forward/backward of the train batch, train-memory update and SGD step on the weights. The
search space is built as for MSMT17 (624 train / 833 valid memory slots) on fixed random
batches. Prints ONE JSON line: seconds per step of the best repeat (and the median), the
reference PyTorch figure (6.3 s) and the target (2.1 s).

``--mixed_precision mixed_bfloat16`` times the same step under that policy (as
``python -m nas.search --mixed_precision mixed_bfloat16`` runs it).

Usage: ``python benchmarks/bench_search.py [--repeats 3] [--steps 1] [--clean_bilevel]``
"""
import argparse
import sys

from common import add_common_arguments, configure, emit, machine, rate_fields, time_calls

REFERENCE_SECONDS = 6.3
TARGET_SECONDS = 2.1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--clean_bilevel", action="store_true",
                        help="no accumulated validation gradient (the search's --clean_bilevel)")
    add_common_arguments(parser, repeats=3, steps=1)
    args = parser.parse_args()
    if args.batch_size < 8 or args.batch_size % 4:
        raise SystemExit(f"--batch_size={args.batch_size}: needs a multiple of 4, at least 8.")
    if args.mixed_precision == "mixed_float16":
        print("note: python -m nas.search refuses mixed_float16; this figure shows what the "
              "same step would take.", file=sys.stderr)
    configure(args)

    import numpy as np
    import tensorflow as tf

    from nas.bilevel import BilevelStep
    from nas.spaces.msi import MsiSearchSpace
    from reid_tf.training.optimizers import TorchAdam, TorchSGD

    space = MsiSearchSpace.without_data(624, 833, input_shape=(args.height, args.width, 3))
    weight_optimizer = TorchSGD(learning_rate=0.025, momentum=0.9, weight_decay_l2=5e-4)
    arch_optimizer = TorchAdam(learning_rate=0.002, beta_1=0.5, beta_2=0.999, epsilon=1e-8,
                               weight_decay_l2=1e-3)
    weight_optimizer.build(space.weight_variables)
    arch_optimizer.build(space.arch_variables)
    step = BilevelStep(space, weight_optimizer, arch_optimizer,
                       accumulate_valid_gradients=not args.clean_bilevel,
                       jit_compile=args.jit_compile)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.height, args.width, 3)
    identities = args.batch_size // 4
    train_images = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    valid_images = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    train_labels = tf.constant(np.repeat(np.arange(identities), 4).astype(np.int32))
    valid_labels = tf.constant(np.repeat(np.arange(identities) + identities, 4).astype(np.int32))

    def iteration():
        return step(train_images, train_labels, valid_images, valid_labels,
                    architecture_update=True)["loss"]

    timing = time_calls(iteration, args.repeats, args.steps, args.warmup)
    fields = rate_fields(timing, 2 * args.batch_size)
    emit({
        "benchmark": "msi_search_step",
        "policy": args.mixed_precision,
        "jit_compile": args.jit_compile,
        "clean_bilevel": args.clean_bilevel,
        "batch_size": args.batch_size,
        "image_size": [args.height, args.width],
        "seconds": fields.pop("seconds_best"),
        **fields,
        "reference_seconds": REFERENCE_SECONDS,
        "target_seconds": TARGET_SECONDS,
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
