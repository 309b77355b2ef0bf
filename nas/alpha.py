"""The architecture weights α: derivation of the MSI genotype, JSON files, α history and heatmaps.

* :func:`derive_genotype` — ``argmax`` of every row of α (the first index wins a tie, as
  ``torch.argmax``/``numpy.argmax``) → ``PRIMITIVES[index]`` (msinet.md §5);
* :func:`write_genotype` — validates and writes the JSON list through
  :func:`reid_tf.models.genotypes.save_genotype`, the format ``solution.py
  --backbone_model_name msinet --genotype_file_path <file>`` reads;
* :class:`AlphaHistory` — α and ``softmax(α)`` at every logged epoch, kept in
  ``alpha_history.npz`` (arrays ``epochs (T,)``, ``alpha (T, 12, 4)``, ``weights (T, 12, 4)``,
  ``primitives (4,)``);
* :func:`plot_alpha_history` — a heatmap PNG (matplotlib Agg) of ``softmax(α)`` over the logged
  epochs: one line per (interaction point, operation), 48 lines;
* :class:`SwitchAlphaHistory` and :func:`plot_switch_history` — the same for the BN-split
  search (one ``(split, share)`` row per switchable BN; the heatmap of ``π_share``).
"""
import os

import numpy as np

from reid_tf.models.genotypes import GENOTYPE_LENGTH, save_genotype, validate_genotype
from reid_tf.models.msinet_ops import PRIMITIVES


MSI_ALPHA_SHAPE = (GENOTYPE_LENGTH, len(PRIMITIVES))
MSI_ALPHA_MEANING = (f"one row per interaction point, one column per operation of "
                     f"{PRIMITIVES}")


def _alpha_array(alpha, shape=MSI_ALPHA_SHAPE, meaning=MSI_ALPHA_MEANING):
    alpha = np.asarray(alpha.numpy() if hasattr(alpha, "numpy") else alpha, dtype=np.float64)
    if alpha.shape != tuple(shape):
        raise ValueError(f"α must have shape {tuple(shape)} ({meaning}), got {alpha.shape}.")
    if not np.all(np.isfinite(alpha)):
        raise ValueError("α holds non-finite values; the search diverged.")
    return alpha


def derive_genotype(alpha):
    """The 12 operation names of the argmax of each α row (first index wins ties).

    Args:
      alpha: array-like or ``tf.Variable`` of shape ``(12, 4)`` (columns in ``PRIMITIVES``
        order ``none, ag, cross_att, exc``). ``softmax(α)`` gives the same result.

    Returns:
      A validated list of 12 names, in the genotype order of msinet.md §4.1.
    """
    alpha = _alpha_array(alpha)
    genotype = [PRIMITIVES[int(index)] for index in np.argmax(alpha, axis=1)]
    return validate_genotype(genotype, source="derived genotype")


def write_genotype(genotype, file_path):
    """Validate ``genotype`` and write it as a JSON list (``reid_tf.models.genotypes``)."""
    save_genotype(genotype, file_path)
    return file_path


def softmax_rows(alpha):
    """Row-wise softmax in float64 (numerically stable)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    shifted = np.exp(alpha - alpha.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class AlphaHistory:
    """α and ``softmax(α)`` per logged epoch, stored in an ``.npz`` file.

    ``epochs[i]`` is the number of completed epochs when entry ``i`` was logged. Logging the
    same epoch again replaces the entry (a resumed search logs the epoch it resumes at again).
    Any search space can use it: ``shape`` is the shape of α, ``meaning`` explains it in errors
    and ``labels`` (name -> sequence) are stored next to the arrays (default: the MSI space,
    ``(12, 4)`` with the ``primitives``).
    """

    def __init__(self, file_path, shape=MSI_ALPHA_SHAPE, meaning=MSI_ALPHA_MEANING,
                 labels=None):
        self.file_path = file_path
        self.shape = tuple(shape)
        self.meaning = meaning
        self.labels = dict(labels if labels is not None else {"primitives": PRIMITIVES})
        self.epochs, self.alpha = [], []
        if os.path.isfile(file_path):
            with np.load(file_path) as content:
                self.epochs = [int(epoch) for epoch in content["epochs"]]
                self.alpha = [np.asarray(row, np.float32) for row in content["alpha"]]
            for alpha in self.alpha:
                if alpha.shape != self.shape:
                    raise ValueError(f"{file_path}: holds α of shape {alpha.shape}, this search "
                                     f"has {self.shape}; use another run folder.")

    def truncate(self, last_epoch):
        """Drop entries logged after ``last_epoch`` completed epochs (resuming)."""
        keep = [i for i, epoch in enumerate(self.epochs) if epoch <= last_epoch]
        self.epochs = [self.epochs[i] for i in keep]
        self.alpha = [self.alpha[i] for i in keep]

    def log(self, epoch, alpha):
        """Record α after ``epoch`` completed epochs and rewrite the file."""
        alpha = _alpha_array(alpha, self.shape, self.meaning).astype(np.float32)
        if epoch in self.epochs:
            index = self.epochs.index(epoch)
            self.alpha[index] = alpha
        else:
            self.epochs.append(int(epoch))
            self.alpha.append(alpha)
            order = np.argsort(self.epochs, kind="stable")
            self.epochs = [self.epochs[i] for i in order]
            self.alpha = [self.alpha[i] for i in order]
        self.save()

    def arrays(self):
        """``{"epochs", "alpha", "weights", <labels>}`` as numpy arrays."""
        alpha = np.stack(self.alpha) if self.alpha else np.zeros((0,) + self.shape, np.float32)
        arrays = {"epochs": np.asarray(self.epochs, np.int64), "alpha": alpha,
                  "weights": softmax_rows(alpha).astype(np.float32)}
        arrays.update({name: np.asarray(values) for name, values in self.labels.items()})
        return arrays

    def save(self):
        directory = os.path.dirname(os.path.abspath(self.file_path))
        os.makedirs(directory, exist_ok=True)
        temporary = f"{self.file_path}.tmp.npz"
        np.savez(temporary, **self.arrays())
        os.replace(temporary, self.file_path)


def plot_alpha_history(history, file_path, title="softmax(α) during the search"):
    """Heatmap of ``softmax(α)`` (rows: interaction point × operation; columns: logged epochs).

    Args:
      history: an :class:`AlphaHistory` or its :meth:`AlphaHistory.arrays` dict.
      file_path: the PNG to write.

    Returns ``file_path`` (nothing is drawn for an empty history; returns ``None`` then).
    """
    arrays = history.arrays() if isinstance(history, AlphaHistory) else history
    weights, epochs = np.asarray(arrays["weights"]), np.asarray(arrays["epochs"])
    if len(epochs) == 0:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps, rows, ops = weights.shape
    matrix = weights.transpose(1, 2, 0).reshape(rows * ops, steps)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.25 * steps + 3.0), 12), dpi=100)
    image = axis.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis",
                        vmin=0.0, vmax=max(1e-6, float(matrix.max())))
    labels = [f"g[{row}] {PRIMITIVES[op]}" for row in range(rows) for op in range(ops)]
    axis.set_yticks(np.arange(rows * ops))
    axis.set_yticklabels(labels, fontsize=6)
    for boundary in range(1, rows):
        axis.axhline(boundary * ops - 0.5, color="white", linewidth=0.8)
    tick_step = max(1, steps // 20)
    ticks = np.arange(0, steps, tick_step)
    axis.set_xticks(ticks)
    axis.set_xticklabels([str(int(epochs[i])) for i in ticks], fontsize=7)
    axis.set_xlabel("completed epochs")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.03, pad=0.02)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    figure.savefig(file_path)
    plt.close(figure)
    return file_path


class SwitchAlphaHistory(AlphaHistory):
    """α of the mixed BNs per logged epoch in an ``.npz`` file: ``epochs (T,)``,
    ``alpha (T, L, 2)``, ``weights (T, L, 2)`` (softmax, columns split/share) and
    ``layers (L,)`` (layer names in config order). Logging an epoch again replaces it."""

    def __init__(self, file_path, layer_names):
        self.layer_names = [str(name) for name in layer_names]
        super().__init__(file_path, shape=(len(self.layer_names), 2),
                         meaning="one (split, share) row per switchable BN",
                         labels={"layers": self.layer_names})


def plot_switch_history(history, file_path, title="π_share of every switchable BN"):
    """Heatmap of ``π_share`` (0: split, 1: share; rows: layers in config order, columns:
    logged epochs). Returns ``file_path``, or ``None`` for an empty history."""
    arrays = history.arrays() if isinstance(history, AlphaHistory) else history
    weights, epochs = np.asarray(arrays["weights"]), np.asarray(arrays["epochs"])
    if len(epochs) == 0:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    share = weights[:, :, 1].T  # (layers, epochs)
    layers = [str(name) for name in arrays["layers"]]
    width, height = max(6.0, 0.25 * len(epochs) + 4.0), max(4.0, 0.16 * len(layers) + 1.5)
    figure, axis = plt.subplots(figsize=(width, height), dpi=100)
    # Fixed margins (tight_layout costs more than the drawing): room for the layer names.
    figure.subplots_adjust(left=2.2 / width, right=0.9, bottom=0.7 / height,
                           top=1.0 - 0.4 / height)
    image = axis.imshow(share, aspect="auto", interpolation="nearest", cmap="coolwarm",
                        vmin=0.0, vmax=1.0)
    axis.set_yticks(np.arange(len(layers)))
    axis.set_yticklabels([f"{index} {name}" for index, name in enumerate(layers)], fontsize=5)
    tick_step = max(1, len(epochs) // 20)
    ticks = np.arange(0, len(epochs), tick_step)
    axis.set_xticks(ticks)
    axis.set_xticklabels([str(int(epochs[i])) for i in ticks], fontsize=7)
    axis.set_xlabel("completed epochs")
    axis.set_title(title)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.03, pad=0.02)
    colorbar.set_label("π_share (above 0.5: share, else split)")
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    figure.savefig(file_path)
    plt.close(figure)
    return file_path
