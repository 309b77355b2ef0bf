"""Project side of the MSINet learning-parity check (used by ``benchmarks/parity_msinet.py``).

Never imports the reference. It prepares the inputs both sides consume (the synthetic
Market-1501 tree, fixed training batches read through the project's loader, the test images),
converts the reference's initial state dict with :mod:`reid_tf.convert.msinet`, computes the
first step's loss terms and gradients with the project's model and objective, runs the project's
training (``reid_tf.cli.train.run``, the path of ``solution.py``) on the fixed batches, and
compares everything with the reference's outputs part by part.
"""
import json
import os

import numpy as np

DATASET_OPTIONS = {"num_train_identities": 100, "num_test_identities": 50}


def dataset_options_flag(cache_folder):
    """``--dataset_options`` of the synthetic Market-1501 tree used on both sides."""
    items = [f"{key}={value}" for key, value in DATASET_OPTIONS.items()]
    return ",".join(items + [f"cache_folder_path={cache_folder}"])


def load_synthetic(cache_folder):
    """The synthetic Market-1501 table (generated into ``cache_folder`` on first use)."""
    from reid_tf.data import load_dataset

    return load_dataset("Synthetic", "", cache_folder_path=cache_folder, **DATASET_OPTIONS)


def market_root(dataframe):
    """The folder that holds ``Market-1501-v15.09.15`` (the reference's ``--data-dir``)."""
    path = dataframe["image_file_path"].iloc[0]
    return os.path.dirname(os.path.dirname(os.path.dirname(path)))


def project_flags(cache_folder, output_folder, height, width, seed, extra=()):
    """Parse ``solution.py``'s flags: the MSINet Market flagfile plus the recipe of issue 15."""
    from absl import flags

    from reid_tf.flags import define_flags

    define_flags()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    argv = ["solution.py", f"--flagfile={os.path.join(root, 'configs/msinet/market1501.flags')}",
            f"--genotype_file_path={os.path.join(root, 'configs/genotypes/msmt.json')}",
            "--dataset_name=Synthetic", f"--dataset_options={dataset_options_flag(cache_folder)}",
            f"--image_height={height}", f"--image_width={width}",
            f"--output_folder_path={output_folder}", f"--seed={seed}", *extra]
    values = flags.FLAGS
    values.unparse_flags()
    values(argv)
    return values


def prepare_batches(dataframe, work_folder, height, width, seed, steps_per_epoch):
    """Write ``batches.npz`` and ``test.npz``: the same float inputs for both sides.

    Training batches: the first epochs of the project's msinet PK sampler (seed ``seed``),
    cut into epochs of ``steps_per_epoch`` batches, read with the project's loader (resize
    included) and normalised, without augmentation. Test images: query then gallery rows, as
    the project's evaluator orders them.
    """
    import pandas as pd
    import tensorflow as tf

    from reid_tf.data.pipeline import make_label_map, make_test_dataset, make_training_dataset
    from reid_tf.data.sampler import PKSampler

    train = dataframe[dataframe["split"] == "train"].reset_index(drop=True)
    label_map = make_label_map(train)
    total = int(sum(steps_per_epoch))
    sampler = PKSampler.from_dataframe(train, 16, 4, steps_per_epoch=total, seed=seed,
                                       policy="msinet")
    dataset = make_training_dataset(train, sampler, height, width, None, label_map, seed,
                                    epoch_index=0)
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    images = np.stack(images)
    np.savez(os.path.join(work_folder, "batches.npz"), images_nhwc=images,
             images_nchw=np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3)),
             labels=np.stack(labels).astype(np.int64),
             steps_per_epoch=np.asarray(steps_per_epoch))
    query = dataframe[dataframe["split"] == "query"]
    gallery = dataframe[dataframe["split"] == "gallery"]
    test = tf.concat(list(make_test_dataset(pd.concat([query, gallery], ignore_index=True),
                                            height, width, 128)), axis=0).numpy()
    np.savez(os.path.join(work_folder, "test.npz"), images_nhwc=test,
             images_nchw=np.ascontiguousarray(test.transpose(0, 3, 1, 2)),
             pids=np.concatenate([query["identity_ID"], gallery["identity_ID"]]),
             camids=np.concatenate([query["camera_ID"], gallery["camera_ID"]]),
             num_query=np.int64(len(query)))
    return len(label_map)


def convert_initial_state(work_folder, seed, num_classes, height, width):
    """``reference_init_S.npz`` → Keras ``.h5`` through :func:`reid_tf.convert.msinet.convert`."""
    from reid_tf.convert.msinet import convert

    state = dict(np.load(os.path.join(work_folder, f"reference_init_{seed}.npz")))
    path = os.path.join(work_folder, f"project_init_{seed}.h5")
    report = convert(state, path, genotype_file_path="msmt", num_classes=num_classes,
                     image_height=height, image_width=width)
    if report.unassigned or report.skipped:
        raise RuntimeError(f"Conversion incomplete: unassigned {report.unassigned}, "
                           f"skipped {report.skipped}.")
    return path


def use_float64():
    """Build every later model in float64 (``floatx`` and the dtype policy), heads included.

    ``reid_tf.models.msinet`` builds its heads under a float32 policy for mixed precision; in
    this check that context is replaced by a no-op so the whole network is float64.
    """
    import contextlib

    import tf_keras as keras

    from reid_tf.models import msinet

    keras.backend.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    msinet.float32_policy = contextlib.nullcontext


def build_from_flags(values, num_classes):
    """The models ``solution.py`` builds for these flags (``reid_tf.models.factory``)."""
    from reid_tf.models.factory import build_models

    models, _, _ = build_models(values, num_classes)
    return models


def first_step(values, num_classes, init_path, images, labels):
    """The first step's loss terms and gradients (Keras variable name → array)."""
    import tensorflow as tf

    from reid_tf.losses.classification import cross_entropy
    from reid_tf.losses.objective import Objective, objective_config_from_flags
    from reid_tf.losses.triplet import batch_hard_triplet

    models = build_from_flags(values, num_classes)
    model = models.training_model
    model.load_weights(init_path)
    objective = Objective(objective_config_from_flags(values, False))
    images = tf.constant(images.astype(model.inputs[0].dtype.as_numpy_dtype))
    labels = tf.constant(labels.astype(np.int32))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        losses = objective(outputs, labels)
    gradients = tape.gradient(losses["total"], variables)
    config = objective.config
    terms = {
        "triplet_global": batch_hard_triplet(outputs["embeddings"][0], labels, margin=0.3,
                                             normalize=config.triplet_normalize),
        "triplet_part": batch_hard_triplet(outputs["embeddings"][1], labels, margin=0.3,
                                           normalize=config.triplet_normalize),
        "ce_global": cross_entropy(outputs["logits"][0], labels, config.label_smoothing),
        "ce_part": cross_entropy(outputs["logits"][1], labels, config.label_smoothing),
        "total": losses["total"],
    }
    return ({name: float(value) for name, value in terms.items()},
            {variable.name: gradient.numpy() for variable, gradient in zip(variables, gradients)
             if gradient is not None},
            {"v": outputs["embeddings"][0].numpy(), "f_v": outputs["embeddings"][1].numpy()})


def reference_in_keras_layout(values, num_classes, arrays):
    """Reference tensors (``{reference key: array}``) in Keras layout, by variable name.

    Assigns them to a fresh model with the project's converter (the same name and layout
    mapping as for checkpoints) and reads the variables back.
    """
    from reid_tf.convert.msinet import assign_state_dict

    model = build_from_flags(values, num_classes).training_model
    report = assign_state_dict(model, arrays)
    names = {keras_name for keras_name, _ in report.assigned}
    return {variable.name: variable.numpy() for variable in model.weights
            if variable.name in names}, dict(report.assigned)


class FixedBatches:
    """``reid_tf.training.data.TrainingInput`` replacement serving ``batches.npz`` unchanged."""

    cross_modality = False

    def __init__(self, path, dtype=np.float32):
        data = np.load(path)
        self.images = data["images_nhwc"].astype(dtype)
        self.labels = data["labels"].astype(np.int32)
        self.steps = [int(value) for value in data["steps_per_epoch"]]
        self.starts = np.cumsum([0] + self.steps)
        self._epoch = 0
        self.batch_size = int(self.images.shape[1])

    @property
    def steps_per_epoch(self):
        return self.steps[self._epoch]

    def epoch_dataset(self, epoch_index, start_step=0):
        import tensorflow as tf

        self._epoch = int(epoch_index)
        begin, end = self.starts[epoch_index] + start_step, self.starts[epoch_index + 1]
        return tf.data.Dataset.from_tensor_slices((self.images[begin:end],
                                                   self.labels[begin:end]))

    def get_state(self):
        return json.dumps({"epoch_index": self._epoch + 1})

    def set_state(self, text):
        self._epoch = int(json.loads(text)["epoch_index"])


def train_on_fixed_batches(values, batches_path, dtype=np.float32):
    """``reid_tf.cli.train.run(values)`` with the training input replaced by the batches.

    Returns the run folder (``training_model.h5``, ``evaluation.json``, ``test.npz``).
    """
    from reid_tf.training import data as training_data
    from reid_tf.cli import train as run_module

    original = training_data.TrainingInput
    training_data.TrainingInput = lambda *args, **kwargs: FixedBatches(batches_path, dtype)
    try:
        results = run_module.run(values)
    finally:
        training_data.TrainingInput = original
    return run_module.run_folder_path(values), results


def evaluate_reference_features(dataframe, features, reference_map, reference_rank1):
    """The project's evaluation (the flagfile's: normalised, squared euclidean, Market rules)
    of the reference's test features (query rows first), next to the reference's R1_mAP."""
    from reid_tf.evaluation.evaluator import EvaluationOptions, evaluate_features

    query = dataframe[dataframe["split"] == "query"].reset_index(drop=True)
    gallery = dataframe[dataframe["split"] == "gallery"].reset_index(drop=True)
    options = EvaluationOptions(protocol="standard", metric="sqeuclidean", normalize=True,
                                max_rank=50)
    summary, _ = evaluate_features(query, gallery, features[:len(query)],
                                   features[len(query):], options)
    return {"project": {"mAP": float(summary["mAP"]), "rank1": float(summary["rank1"])},
            "reference": {"mAP": reference_map, "rank1": reference_rank1}}


def relative_error(value, reference):
    """``|value - reference| / |reference|`` (Frobenius norms; 0/0 counts as 0)."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    denominator = np.linalg.norm(reference)
    difference = np.linalg.norm(value - reference)
    if denominator == 0:
        return 0.0 if difference == 0 else float("inf")
    return float(difference / denominator)


def compare_arrays(project, reference, names=None):
    """Per-name relative errors of two ``{name: array}`` dicts (names of ``reference``)."""
    names = sorted(reference) if names is None else names
    missing = [name for name in names if name not in project]
    if missing:
        raise KeyError(f"Missing on the project side: {missing[:5]}")
    return {name: relative_error(project[name], reference[name]) for name in names}
