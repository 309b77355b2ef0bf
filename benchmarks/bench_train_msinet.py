"""MSINet training-step throughput: batch 32 at 256 × 128, both heads, through the project's trainer.

The step is exactly what ``solution.py`` runs for MSINet (``reid_tf.training.trainer.Trainer``'s
traced step): the 'msmt' MSINet training model (751 classes), the Objective of the MSINet recipe
(hard-margin 0.3 triplet on L2-normalised features + label-smoothing 0.1 cross-entropy, on the
global and the part head) and TorchSGD (momentum 0.9, coupled weight decay 5e-4), with the
dtype policy of ``--mixed_precision`` (loss scaling for ``mixed_float16``). Inputs are fixed
random normalised images (the input pipeline is measured by ``bench_pipeline.py``). Prints ONE
JSON line: images per second of the best repeat (and the median), the reference PyTorch figure
(8.7 img/s) and the target.

Usage: ``python benchmarks/bench_train_msinet.py [--mixed_precision mixed_bfloat16]
[--repeats 5] [--steps 2] [--batch_size 32] [--jit_compile]``
"""
import argparse
import tempfile

from common import add_common_arguments, configure, emit, machine, rate_fields, time_calls

REFERENCE_IMAGES_PER_SECOND = 8.7  # PyTorch 2.13 fp32 on the project's machine (3.66 s/step)
TARGETS = {"float32": 28.0, "mixed_bfloat16": 50.0}


class _FixedBatchData:
    """The trainer's data interface for a trainer that is only used for its step."""

    steps_per_epoch = 1

    def get_state(self):
        return ""

    def set_state(self, text):
        del text


def build_step(args, folder):
    """``(step_function, images, labels)``: the trainer's traced training step on one batch."""
    import numpy as np
    import tensorflow as tf

    from reid_tf.losses.objective import Objective, ObjectiveConfig
    from reid_tf.models.msinet import build_msinet_models
    from reid_tf.training.optimizers import build_optimizer
    from reid_tf.training.trainer import Trainer

    models = build_msinet_models(args.genotype, args.num_classes,
                                 input_shape=(args.height, args.width, 3))
    objective = Objective(ObjectiveConfig(triplet_margin=0.3, triplet_normalize=True,
                                          label_smoothing=0.1))
    trainer = Trainer(
        models=models, objective=objective, data=_FixedBatchData(),
        schedule=lambda epoch: 0.065,
        optimizer_factory=lambda name: build_optimizer("sgd", 0.065, momentum=0.9,
                                                       weight_decay=5e-4),
        output_folder=folder, epoch_num=1, evaluate_every_N_epochs=0, verbose=0,
        jit_compile=args.jit_compile)
    step = trainer._make_train_step()  # noqa: SLF001 (the step fit() runs, without data)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.standard_normal((args.batch_size, args.height, args.width, 3),
                                             dtype=np.float32))
    per_identity = 4
    labels = tf.constant(np.repeat(np.arange(args.batch_size // per_identity),
                                   per_identity).astype(np.int32))
    return step, images, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num_classes", type=int, default=751)
    parser.add_argument("--genotype", default="msmt")
    add_common_arguments(parser, repeats=5, steps=2)
    args = parser.parse_args()
    if args.batch_size < 8 or args.batch_size % 4:
        raise SystemExit(f"--batch_size={args.batch_size}: needs a multiple of 4 (P x K with "
                         "K = 4), at least 8.")
    configure(args)
    with tempfile.TemporaryDirectory(prefix="reid_tf_bench_train_") as folder:
        step, images, labels = build_step(args, folder)
        timing = time_calls(lambda: step(images, labels)["total"], args.repeats, args.steps,
                            args.warmup)
        loss = float(step(images, labels)["total"])
    record = {
        "benchmark": "msinet_training_step",
        "policy": args.mixed_precision,
        "jit_compile": args.jit_compile,
        "batch_size": args.batch_size,
        "image_size": [args.height, args.width],
        **rate_fields(timing, args.batch_size),
        "reference_images_per_second": REFERENCE_IMAGES_PER_SECOND,
        "target_images_per_second": TARGETS.get(args.mixed_precision),
        "loss": round(loss, 4),
        "machine": machine(),
    }
    emit(record)


if __name__ == "__main__":
    main()
