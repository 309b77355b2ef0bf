"""Project side of the CM-NAS learning-parity check (used by ``benchmarks/parity_cmnas.py``).

Never imports the reference. It writes the batch both sides consume (``batch.npz``: P
identities x K visible + K infrared images of a synthetic SYSU-MM01 tree, read with the CM-NAS
resize, normalised, no augmentation; visible half first), converts the reference's initial
state dict with :mod:`reid_tf.convert.cmnas`, computes the first step's loss terms and
gradients with the project's model and objective (the flags of ``configs/cmnas/sysu.flags``),
and trains the same steps with the project's :class:`~reid_tf.training.trainer.Trainer` as
``reid_tf.cli.train`` builds it (``_trainer``: the three-group torch Adam, the schedule, the
EMA), with the training input replaced by the fixed batch.
"""
import json
import os
import shutil
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def prepare_batch(work, config_path, height, width, identities=4, per_modality=4):
    """Write ``batch.npz`` (NCHW float64 images, labels ``concat(y_v, y_t)``, the config)."""
    from reid_tf.data import load_dataset
    from reid_tf.data.images import read_image
    from reid_tf.models.cmnas_config import read_config

    frame = load_dataset("Synthetic_SYSU", "", cache_folder_path=os.path.join(work, "cache"),
                         num_train_identities=identities, num_val_identities=1,
                         num_test_identities=2, images_per_camera=4,
                         image_size=(2 * height, 2 * width))
    train = frame[frame["split"] == "train"].sort_values("image_file_path")
    halves = {"visible": ([], []), "infrared": ([], [])}
    for label, identity in enumerate(sorted(set(train["identity_ID"]))[:identities]):
        rows = train[train["identity_ID"] == identity]
        for modality, (images, labels) in halves.items():
            chosen = rows[rows["modality"] == modality]["image_file_path"].tolist()
            if not chosen:
                raise RuntimeError(f"identity {identity} has no {modality} image")
            # As the reference sampler does for a short identity: repeat its images.
            for index in range(per_modality):
                path = chosen[index % len(chosen)]
                images.append(read_image(path, height, width, resize="pil_lanczos"))
                labels.append(label)
    images = np.stack(halves["visible"][0] + halves["infrared"][0]).astype(np.float64) / 255.0
    images = (images - MEAN) / STD
    labels = np.array(halves["visible"][1] + halves["infrared"][1], np.int32)
    np.savez(os.path.join(work, "batch.npz"), images_nchw=images.transpose(0, 3, 1, 2),
             images_nhwc=images, labels=labels, num_classes=identities,
             config=np.array(read_config(config_path), np.int32))


def use_float64():
    import tf_keras as keras

    keras.backend.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")


def parse_flags(work, config_path, height, width, steps, dtype_name):
    """``solution.py``'s flags: the SYSU-MM01 flagfile, the batch's size, no augmentation."""
    from absl import flags

    from reid_tf.flags import define_flags

    define_flags()
    argv = ["solution.py", f"--flagfile={os.path.join(ROOT, 'configs/cmnas/sysu.flags')}",
            "--dataset_name=Synthetic_SYSU", f"--cmnas_config_file_path={config_path}",
            f"--image_height={height}", f"--image_width={width}",
            f"--output_folder_path={os.path.join(work, 'project_run_' + dtype_name)}",
            "--overwrite_output_folder",
            "--epoch_num=1", f"--steps_per_epoch={steps}",
            "--nouse_data_augmentation_in_training", "--export_formats="]
    values = flags.FLAGS
    values.unparse_flags()
    values(argv)
    return values


def convert_initial_state(work, config_path, height, width):
    from reid_tf.convert.cmnas import convert

    state = dict(np.load(os.path.join(work, "reference_init.npz")))
    path = os.path.join(work, "project_init.h5")
    report = convert(state, path, cmnas_config_file_path=config_path, image_height=height,
                     image_width=width)
    if report.unassigned or report.skipped:
        raise RuntimeError(f"Conversion incomplete: unassigned {report.unassigned}, "
                           f"skipped {report.skipped}.")
    return path


class FixedBatch:
    """``reid_tf.training.data.TrainingInput`` replacement: one epoch of ``steps`` copies of
    the batch."""

    cross_modality = True

    def __init__(self, images, labels, steps):
        self.images, self.labels, self.steps = images, labels, int(steps)
        self.batch_size = int(images.shape[0])
        self._epoch = 0

    @property
    def steps_per_epoch(self):
        return self.steps

    def epoch_dataset(self, epoch_index, start_step=0):
        import tensorflow as tf

        self._epoch = int(epoch_index)
        count = self.steps - start_step
        return tf.data.Dataset.from_tensors((self.images, self.labels)).repeat(count)

    def get_state(self):
        return json.dumps({"epoch_index": self._epoch + 1})

    def set_state(self, text):
        self._epoch = int(json.loads(text)["epoch_index"])


def keras_layout(arrays, prefix):
    """``{keras variable name: array}`` of the reference arrays named ``prefix + torch key``
    (the converter's own key map and transforms)."""
    from reid_tf.convert.cmnas import cmnas_key_map

    result = {}
    for keras_name, key, transform in cmnas_key_map():
        if prefix + key in arrays:
            value = np.asarray(arrays[prefix + key])
            result[keras_name] = transform(value) if transform is not None else value
    return result


def run_project(work, config_path, height, width, steps, dtype_name):
    """First step (loss terms, gradients, BN statistics) and ``steps`` trainer steps."""
    import tensorflow as tf

    from reid_tf.cli import settings as cli_settings
    from reid_tf.cli import train as train_module
    from reid_tf.losses.objective import Objective
    from reid_tf.models.cmnas import build_cmnas_models

    if dtype_name == "float64":
        use_float64()
    dtype = np.float64 if dtype_name == "float64" else np.float32
    batch = np.load(os.path.join(work, "batch.npz"))
    images = batch["images_nhwc"].astype(dtype)
    labels = batch["labels"].astype(np.int32)
    values = parse_flags(work, config_path, height, width, steps, dtype_name)
    shutil.rmtree(values.output_folder_path, ignore_errors=True)
    init_path = os.path.join(work, "project_init.h5")
    models = build_cmnas_models(config_path, int(batch["num_classes"]), (height, width, 3))
    model = models.training_model
    model.load_weights(init_path)

    objective = Objective(cli_settings.objective_config(values, True))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        outputs = model([images, tf.constant(0, tf.int32)], training=True)
        losses = objective(outputs, labels)
    gradients = tape.gradient(losses["total"], variables)
    record = {f"loss/{name}": float(value) for name, value in losses.items()}
    record["features/global_feat"] = outputs["embeddings"][0].numpy()
    record["features/feat"] = outputs["bnneck"][0].numpy()
    for variable, gradient in zip(variables, gradients):
        if gradient is not None:
            record[f"grad/{variable.name}"] = gradient.numpy()
    for variable in model.weights:
        if "moving_" in variable.name:
            record[f"bn_first/{variable.name}"] = variable.numpy()

    model.load_weights(init_path)  # the trainer starts from the initial state again
    folder = types.SimpleNamespace(path=values.output_folder_path, restore_path=None)
    os.makedirs(folder.path, exist_ok=True)
    trainer = train_module._trainer(values, models, FixedBatch(images, labels, steps), None,
                                    folder, tf.distribute.get_strategy())
    step_losses = []
    original = trainer.train_step

    def recording_step(train_step, step_index, one_batch):
        result = original(train_step, step_index, one_batch)
        step_losses.append(result["total"])
        return result

    trainer.train_step = recording_step
    trainer.fit()
    record["learning_rates"] = np.array([float(optimizer.learning_rate.numpy())
                                         for _, _, optimizer, _ in trainer.groups])
    record["step_losses"] = np.array(step_losses)
    for variable in model.weights:
        record[f"final/{variable.name}"] = variable.numpy()
    for variable, shadow in zip(trainer.ema.variables_tracked, trainer.ema.shadow):
        record[f"ema/{variable.name}"] = shadow.numpy()
    return record


def relative_error(value, reference):
    """``|value - reference| / |reference|`` (Frobenius norms; 0/0 counts as 0)."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    denominator = np.linalg.norm(reference)
    difference = np.linalg.norm(value - reference)
    if denominator == 0:
        return 0.0 if difference == 0 else float("inf")
    return float(difference / denominator)
