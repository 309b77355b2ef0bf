"""Which weights a run keeps as ``training_model.h5``: ``--checkpoint_selection best|last``.

``last`` (the default) keeps the weights after the final epoch. ``best`` reproduces FlipReID's
``ModelCheckpoint(monitor=<test mAP>, mode="max", save_best_only=True)`` (flipreid.md §9.3):
every evaluation of the main phase (the last one: the reference's phase B; the frozen-backbone
phase is not a candidate) whose selection metric (``mAP``) is strictly higher than the best so
far writes ``training_model.h5`` and ``inference_model.h5`` and records the epoch and its
metrics in ``best_checkpoint.json``. After training the final epoch's weights are kept beside
them as ``training_model_last.h5`` / ``inference_model_last.h5``
(:func:`last_file_names`).

``best_checkpoint.json`` is what a resumed run continues from (read from the folder the run
resumes from): the best so far survives an interruption. Every file is written to a temporary
name in the same folder first and moved into place with ``os.replace``, so a reader (or a
killed run) never sees half a file; the weights are replaced before the record that names
them.
"""
import json
import math
import os

from reid_tf.runtime.files import atomic_path, write_json

STATE_FILE = "best_checkpoint.json"
TRAINING_MODEL_FILE = "training_model.h5"
INFERENCE_MODEL_FILE = "inference_model.h5"


def last_file_names(selection):
    """``(training, inference)`` file names of the final epoch's weights under
    ``selection``: the main names for ``last``, ``*_last.h5`` beside the best for ``best``."""
    if selection == "best":
        return "training_model_last.h5", "inference_model_last.h5"
    return TRAINING_MODEL_FILE, INFERENCE_MODEL_FILE


def save_weights_atomically(model, path):
    """``model.save_weights`` in Keras HDF5 to ``path`` (:func:`reid_tf.runtime.files.atomic_path`)."""
    with atomic_path(path) as temporary:
        model.save_weights(temporary, save_format="h5")


def scalar_metrics(metrics):
    """The numbers of an evaluation summary (no curves, names or nested dictionaries)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class BestCheckpoint:
    """Keeps the weights of the evaluation with the highest ``metric`` (see the module
    docstring).

    Args:
      folder: where this process writes (the run folder, or a non-chief worker's temporary
        folder).
      training_model: the model whose weights ``training_model.h5`` holds (the family's plain
        training model).
      inference_model: the model written as ``inference_model.h5`` (sharing its layers).
      metric: the key of the evaluation summary to maximise.
      restore_folder: where the best so far is read from (default ``folder``; a resumed
        multi-worker run's other workers read the chief's).
      log: where messages go.
    """

    def __init__(self, folder, training_model, inference_model, metric="mAP",
                 restore_folder=None, log=print):
        self.folder = folder
        self.restore_folder = restore_folder or folder
        self.training_model = training_model
        self.inference_model = inference_model
        self.metric = metric
        self.log = log
        self.state = self._read_state()
        self._weights = None  # the best weights, when this process saved them

    def _read_state(self):
        path = os.path.join(self.restore_folder, STATE_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
            value = float(state["value"])
            int(state["global_epoch"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a readable best-checkpoint record ({error}); "
                             "remove it or start afresh with --overwrite_output_folder.") from None
        if state.get("metric") != self.metric:
            raise ValueError(f"{path} selects by {state.get('metric')!r}, this run by "
                             f"{self.metric!r}; start afresh with --overwrite_output_folder.")
        if not math.isfinite(value):
            raise ValueError(f"{path}: the recorded {self.metric} is {value}.")
        return state

    @property
    def best_value(self):
        return float(self.state["value"]) if self.state else -math.inf

    def describe(self):
        """One line for the run log."""
        text = (f"Checkpoint selection: best {self.metric} (an evaluation that improves it "
                f"writes {TRAINING_MODEL_FILE} and {INFERENCE_MODEL_FILE})")
        if self.state:
            text += (f"; best so far {self.metric} {self.best_value:.6f} at "
                     f"{self.state['phase']} epoch {self.state['epoch']}")
        return text + "."

    def consider(self, metrics, *, phase, epoch, global_epoch):
        """Keep the current weights if ``metrics[metric]`` beats the best so far (strictly,
        like Keras' ``ModelCheckpoint``). ``epoch`` counts within ``phase`` from 1,
        ``global_epoch`` over the run. Returns whether they were kept."""
        value = metrics.get(self.metric) if metrics else None
        where = f"{phase} epoch {epoch}"
        if value is None or not math.isfinite(float(value)):
            self.log(f"{where}: no finite {self.metric} ({value}); the best checkpoint is "
                     "unchanged.")
            return False
        value = float(value)
        previous = self.best_value
        if value <= previous:
            self.log(f"{where}: {self.metric} {value:.6f} did not improve on "
                     f"{previous:.6f} ({self.state['phase']} epoch {self.state['epoch']}).")
            return False
        save_weights_atomically(self.training_model,
                                os.path.join(self.folder, TRAINING_MODEL_FILE))
        save_weights_atomically(self.inference_model,
                                os.path.join(self.folder, INFERENCE_MODEL_FILE))
        self._weights = self.training_model.get_weights()
        state = {"metric": self.metric, "value": value, "phase": phase, "epoch": int(epoch),
                 "global_epoch": int(global_epoch), "metrics": scalar_metrics(metrics),
                 "files": [TRAINING_MODEL_FILE, INFERENCE_MODEL_FILE]}
        write_json(os.path.join(self.folder, STATE_FILE), state, indent=2, default=float)
        self.state = state
        improved = "" if previous == -math.inf else f" (improved from {previous:.6f})"
        self.log(f"{where}: {self.metric} {value:.6f}{improved}; saved {TRAINING_MODEL_FILE} "
                 f"and {INFERENCE_MODEL_FILE} as the best.")
        return True

    def restore_best_weights(self):
        """Put the best weights back into the models (after training, for the target
        evaluation and the exports): from memory when this process kept them, else from
        ``restore_folder``'s ``training_model.h5``. Raises when no evaluation was kept."""
        if self.state is None:
            raise RuntimeError(
                f"--checkpoint_selection=best: no evaluation of this run gave a finite "
                f"{self.metric}, so there is no best checkpoint; the final weights are in "
                f"{os.path.join(self.folder, last_file_names('best')[0])}.")
        if self._weights is not None:
            self.training_model.set_weights(self._weights)
            return
        path = os.path.join(self.restore_folder, TRAINING_MODEL_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: the best checkpoint recorded in {STATE_FILE} "
                                    f"({self.state['phase']} epoch {self.state['epoch']}) is "
                                    "missing.")
        self.training_model.load_weights(path)
