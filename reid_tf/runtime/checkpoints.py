"""Reading PyTorch checkpoints and assigning their tensors to Keras variables, with a report.

The assignment is strict in one way and lenient in another, like the reference loaders:
a checkpoint tensor whose name is unknown or whose shape does not fit is skipped (and listed),
but no Keras variable may be assigned twice, and every Keras variable left at its initial value
is listed in the report.
"""
import collections
import os

import numpy as np

from reid_tf.runtime.errors import UsageError

TORCH_INSTALL_HINT = (
    "Reading PyTorch checkpoints needs torch (CPU is enough). Install it with "
    "`pip install -e .[torch]` or `pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu`."
)


class ConversionError(UsageError):
    """A checkpoint that cannot be read or converted."""


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _unwrap(checkpoint, state_dict_key, file_path):
    if not isinstance(checkpoint, collections.abc.Mapping):
        raise ConversionError(f"{file_path}: expected a dict of tensors, got {type(checkpoint)}.")
    if state_dict_key not in (None, "auto"):
        if state_dict_key not in checkpoint:
            raise ConversionError(
                f"{file_path}: no entry {state_dict_key!r} in the checkpoint "
                f"(top-level keys: {sorted(checkpoint)[:20]}).")
        return checkpoint[state_dict_key]
    for key in ("state_dict", "model", "model_state_dict"):
        value = checkpoint.get(key)
        if isinstance(value, collections.abc.Mapping):
            return value
    return checkpoint


class PickleRefusedError(ConversionError):
    """A checkpoint that can only be read by executing pickled Python objects."""


def _pickle_reason(error):
    """The line of torch's weights-only error that names what the file needs (e.g.
    ``Unsupported global: GLOBAL argparse.Namespace``)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    text = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return text.split(" was not an allowed global")[0].strip()


def _torch_load(file_path, allow_pickle, flag):
    try:
        import torch
    except ImportError:
        raise ConversionError(f"Cannot read {file_path}: {TORCH_INSTALL_HINT}") from None
    import pickle
    try:
        return torch.load(file_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _pickle_reason(error)
        if not allow_pickle:
            raise PickleRefusedError(
                f"{file_path} ({flag}): refused, it holds more than tensors and can only be read "
                f"by executing pickled Python code ({reason}). Pass --allow_pickle to load it, "
                "only if you trust where the file comes from.") from None
        print(f"Warning: loading {file_path} with pickle (--allow_pickle): {reason}.",
              flush=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ConversionError(f"Cannot read checkpoint {file_path} ({flag}): {error}") from error
    try:
        return torch.load(file_path, map_location="cpu", weights_only=False)
    except Exception as error:  # unpickling may raise anything; reported with the path
        raise ConversionError(f"Cannot read checkpoint {file_path} ({flag}): {error}") from error


def load_state_dict(file_path, state_dict_key="auto", strip_prefixes=("module.",),
                    allow_pickle=False, flag="--source_file_path"):
    """Read a checkpoint into an ordered ``{name: numpy array}``.

    ``.pth``/``.pth.tar``/``.pt`` files are read with torch (CPU) with ``weights_only=True``:
    a file that needs pickle (e.g. one that stores an ``argparse.Namespace`` beside its
    tensors) is refused with :class:`PickleRefusedError` naming the file and what it needs,
    unless ``allow_pickle`` (``--allow_pickle``: for trusted files only). ``.npz`` files are
    read with numpy (never with pickle). ``flag`` names the flag the path came from in the
    messages. A state dict wrapped under ``state_dict`` or ``model`` (or the key given by
    ``state_dict_key``, e.g. ``"ema"``) is unwrapped, and a leading ``module.``
    (DataParallel) is stripped from every name. Non-tensor entries are dropped.
    """
    file_path = os.path.expanduser(str(file_path))
    if not os.path.isfile(file_path):
        raise ConversionError(f"Checkpoint file not found: {file_path} (flag {flag}).")
    if file_path.endswith(".npz"):
        try:
            with np.load(file_path, allow_pickle=False) as archive:
                checkpoint = {name: archive[name] for name in archive.files}
        except ValueError as error:  # object arrays need pickle
            raise PickleRefusedError(f"{file_path} ({flag}): refused, {error}") from None
    else:
        checkpoint = _torch_load(file_path, allow_pickle, flag)
    state_dict = _unwrap(checkpoint, state_dict_key, file_path)
    result = collections.OrderedDict()
    for name, value in state_dict.items():
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            continue
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
        result[name] = _to_numpy(value)
    return result


def conv_kernel(weight):
    """PyTorch conv weight ``(O, I, kh, kw)`` -> Keras ``(kh, kw, I, O)``."""
    return np.transpose(weight, (2, 3, 1, 0))


def depthwise_kernel(weight):
    """PyTorch depthwise weight ``(C, 1, kh, kw)`` -> Keras ``DepthwiseConv2D`` ``(kh, kw, C, 1)``."""
    return np.transpose(weight, (2, 3, 0, 1))


def linear_kernel(weight):
    """PyTorch linear weight ``(out, in)`` -> Keras ``Dense`` kernel ``(in, out)``."""
    return np.transpose(weight, (1, 0))


ConversionReport = collections.namedtuple(
    "ConversionReport", ["assigned", "skipped", "unused", "unassigned"])
ConversionReport.__doc__ = """Outcome of a conversion.

assigned: list of (keras variable name, checkpoint key);
skipped: list of (checkpoint key, reason) for tensors whose target exists but does not fit;
unused: checkpoint keys never used;
unassigned: Keras variable names left at their initial value.
"""


class WeightAssigner:
    """Assigns checkpoint tensors to the variables of a Keras model and keeps the books."""

    def __init__(self, model, state_dict):
        self.model = model
        self.state_dict = state_dict
        self._variables = {variable.name: variable for variable in model.weights}
        self._assigned = collections.OrderedDict()  # keras name -> checkpoint key
        self._used = set()
        self._skipped = []

    def variable(self, keras_name):
        """The model variable called ``keras_name`` (e.g. ``"cells_0/conv1a/kernel:0"``)."""
        try:
            return self._variables[keras_name]
        except KeyError:
            raise ConversionError(f"The Keras model has no variable {keras_name!r}.") from None

    def assign(self, keras_name, checkpoint_key, transform=None):
        """Copy ``state_dict[checkpoint_key]`` (optionally transformed) into ``keras_name``.

        Returns True when assigned; False when the key is missing or the shape does not fit
        (the tensor is then recorded as skipped, like the reference's name-and-shape loader).
        """
        if checkpoint_key not in self.state_dict:
            return False
        variable = self.variable(keras_name)
        if keras_name in self._assigned:
            raise ConversionError(
                f"Keras variable {keras_name} would be assigned twice (from "
                f"{self._assigned[keras_name]} and {checkpoint_key}).")
        value = self.state_dict[checkpoint_key]
        if transform is not None:
            value = transform(value)
        if tuple(value.shape) != tuple(variable.shape):
            self._skipped.append((checkpoint_key, f"shape {tuple(self.state_dict[checkpoint_key].shape)}"
                                  f" does not fit {keras_name} {tuple(variable.shape)}"))
            self._used.add(checkpoint_key)
            return False
        variable.assign(value.astype(variable.dtype.as_numpy_dtype))
        self._assigned[keras_name] = checkpoint_key
        self._used.add(checkpoint_key)
        return True

    def mark_used(self, checkpoint_key):
        """Record a checkpoint tensor as deliberately ignored (e.g. BN batch counters)."""
        self._used.add(checkpoint_key)

    def report(self):
        unused = [key for key in self.state_dict if key not in self._used]
        unassigned = [name for name in self._variables if name not in self._assigned]
        return ConversionReport(list(self._assigned.items()), list(self._skipped), unused,
                                unassigned)


def print_report(report, stream=None):
    """Human-readable summary of a :class:`ConversionReport`."""
    import sys
    stream = stream or sys.stdout
    print(f"Assigned {len(report.assigned)} Keras variables.", file=stream)
    if report.skipped:
        print(f"Skipped {len(report.skipped)} checkpoint tensors (name or shape mismatch):",
              file=stream)
        for key, reason in report.skipped:
            print(f"  {key}: {reason}", file=stream)
    if report.unused:
        print(f"{len(report.unused)} checkpoint tensors not used:", file=stream)
        for key in report.unused:
            print(f"  {key}", file=stream)
    if report.unassigned:
        print(f"{len(report.unassigned)} Keras variables left at their initial value:",
              file=stream)
        for name in report.unassigned:
            print(f"  {name}", file=stream)


def _h5_weights(file_path):
    """``{layer name: [(weight name, dataset array), ...]}`` of a Keras ``save_weights`` HDF5
    file (the tf-keras layout: ``layer_names`` at the root, ``weight_names`` per layer)."""
    import h5py

    def text(value):
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    result = collections.OrderedDict()
    try:
        with h5py.File(file_path, "r") as archive:
            group = archive["model_weights"] if "model_weights" in archive else archive
            if "layer_names" not in group.attrs:
                raise ConversionError(f"{file_path}: not a Keras weights file (no layer_names).")
            for layer_name in map(text, group.attrs["layer_names"]):
                layer_group = group[layer_name]
                names = [text(name) for name in layer_group.attrs.get("weight_names", [])]
                if names:
                    result[layer_name] = [(name, np.asarray(layer_group[name])) for name in names]
    except OSError as error:
        raise ConversionError(f"Cannot read weights file {file_path}: {error}") from error
    return result


def load_h5_by_name_and_shape(model, file_path, assign=True):
    """Copy the tensors of a Keras ``.h5`` weights file into ``model`` by layer name and
    shape, like the references' ``copy_state_dict``: a weight whose layer is in the file with
    a tensor of the same name (or, when the layer has as many weights as the file's, the same
    position) and the same shape is loaded; every other weight keeps its value and is listed.

    Returns a :class:`ConversionReport` (``assigned``: (model weight, file tensor);
    ``skipped``: (file tensor, shape reason); ``unused``: file tensors not loaded (those of
    ``skipped`` included);
    ``unassigned``: model weights left as they were). ``assign=False`` only works out the
    report.
    """
    saved = _h5_weights(file_path)
    assigned, skipped, unassigned = [], [], []
    pending = []
    for layer in model.layers:
        weights = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if not weights:
            continue
        entries = saved.get(layer.name)
        if entries is None:
            unassigned.extend(weight.name for weight in weights)
            continue
        by_name = {name: (name, value) for name, value in entries}
        for position, weight in enumerate(weights):
            entry = by_name.get(weight.name)
            if entry is None and len(entries) == len(weights):
                entry = entries[position]
            if entry is None:
                unassigned.append(weight.name)
                continue
            key = f"{layer.name}/{entry[0]}"
            if tuple(entry[1].shape) != tuple(weight.shape):
                skipped.append((key, f"shape {tuple(entry[1].shape)} does not fit {weight.name} "
                                     f"{tuple(weight.shape)}"))
                unassigned.append(weight.name)
                continue
            pending.append((weight, entry[1]))
            assigned.append((weight.name, key))
    for weight, value in pending if assign else ():
        weight.assign(value.astype(weight.dtype.as_numpy_dtype))
    loaded = {key for _, key in assigned}
    unused = [f"{layer}/{name}" for layer, entries in saved.items() for name, _ in entries
              if f"{layer}/{name}" not in loaded]
    return ConversionReport(assigned, skipped, unused, unassigned)
