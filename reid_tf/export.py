"""Export an inference model: Keras ``.h5`` weights, a TensorFlow SavedModel, ONNX (tf2onnx).

``--export_formats`` (``h5`` by default, ``savedmodel``, ``onnx``) writes into the run folder,
after training and with ``--evaluation_only``:

* ``h5``: ``inference_model.h5``, the Keras weights;
* ``savedmodel``: ``inference_model_savedmodel/``. Its ``serving_default`` signature takes
  normalised float32 NHWC ``images`` (any batch size) and returns ``{"features": ...}``, the
  model's outputs concatenated (the evaluation feature before any flip averaging). Only the
  traced serving functions and the variables are saved — not the Keras layers, whose
  serialisation made the export of a ResNeSt-50 take over a minute;
* ``onnx``: ``inference_model.onnx`` (opset 17), input ``images``, output ``features``; needs
  the optional tf2onnx (``pip install -e .[onnx]``);
* ``tflite``: ``inference_model.tflite`` (LiteRT flatbuffer, converted by
  ``tf.lite.TFLiteConverter`` from the serving function; input ``images``, output
  ``features``, dynamic batch axis). ``--tflite_quantization`` picks ``float32`` (no
  quantization), ``float16`` (weights stored as float16, ``inference_model_float16.tflite``) or
  ``int8`` (dynamic-range: int8 weights, activations quantized on the fly,
  ``inference_model_int8.tflite``). Run it with ``ai_edge_litert.interpreter`` (the optional
  extra ``pip install -e .[litert]``) or ``tf.lite.Interpreter``, see :func:`tflite_features`.

Models with a ``mode`` input (CM-NAS, the switchable MSINet) are exported for inference, where
the mode says which modality the batch holds: 1 visible, 2 infrared (mode 0, the mixed
training batch, is not an inference mode). Each exported function runs the model with its mode
fixed at trace time, as the evaluator does (static BN branches). The SavedModel's
``serving_default`` takes ``images`` and an int32 scalar ``mode`` (1 or 2; a ``tf.cond``
between the two functions), and its signatures ``visible`` and ``infrared`` take the images
alone. ONNX gets one file per mode, ``inference_model_visible.onnx`` and
``inference_model_infrared.onnx`` (tf2onnx does not convert the convolutions inside an ONNX
``If`` correctly), each with the input ``images`` only; LiteRT likewise
(``inference_model_visible.tflite``, ``inference_model_infrared.tflite``, with the
quantization suffix where there is one).

A conversion that fails raises :class:`ExportError` naming the format and the cause. The one
failure handled is a tf2onnx graph optimiser failing in the fast conversion: it is logged as a
warning naming the optimiser, and the model is converted again with tf2onnx skipping the
optimisers that fail.
"""
import contextlib
import functools
import logging
import os
import weakref

import numpy as np
import tensorflow as tf

from reid_tf.runtime.choices import EXPORT_FORMATS, TFLITE_QUANTIZATIONS

FORMATS = EXPORT_FORMATS
INFERENCE_MODES = {"visible": 1, "infrared": 2}
SAVEDMODEL_FOLDER = "inference_model_savedmodel"
ONNX_FILE = "inference_model.onnx"
ONNX_OPSET = 17
TFLITE_STEM = "inference_model"

_LOGGER = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """A conversion of the inference model failed; the message names the format and the
    cause (the original exception is chained)."""

    def __init__(self, export_format, cause, detail=""):
        self.export_format = export_format
        self.cause = cause
        where = f" ({detail})" if detail else ""
        super().__init__(f"--export_formats {export_format}: the conversion failed{where}: "
                         f"{type(cause).__name__}: {cause}")


def uses_mode(model):
    """Whether ``model`` takes ``[images, mode]`` (CM-NAS, switchable MSINet)."""
    return len(model.inputs) > 1


def _image_spec(model, name="images"):
    shape = model.inputs[0].shape
    return tf.TensorSpec([None] + list(shape[1:]), tf.float32, name=name)


def _features(outputs):
    if isinstance(outputs, (list, tuple)):
        outputs = tf.concat([tf.cast(output, tf.float32) for output in outputs], axis=-1)
    return tf.cast(outputs, tf.float32)


def _fixed_mode_function(model, mode):
    """``images -> {"features"}`` with the mode a Python constant (static BN branches)."""
    def serve(images):
        inputs = [images, mode] if mode is not None else images
        return {"features": _features(model(inputs, training=False))}

    return tf.function(serve, input_signature=[_image_spec(model)])


_SERVING_FUNCTIONS = weakref.WeakKeyDictionary()


def serving_functions(model):
    """The exported ``tf.function`` s: ``{"serving_default": f}``, and for models with a mode
    input also ``{"visible": f1, "infrared": f2}`` (see the module docstring). Made once per
    model, so exporting several formats traces the model once."""
    if model not in _SERVING_FUNCTIONS:
        _SERVING_FUNCTIONS[model] = _make_serving_functions(model)
    return _SERVING_FUNCTIONS[model]


def _make_serving_functions(model):
    if not uses_mode(model):
        return {"serving_default": _fixed_mode_function(model, None)}
    branches = {name: _fixed_mode_function(model, mode) for name, mode in INFERENCE_MODES.items()}
    visible, infrared = branches["visible"], branches["infrared"]

    def serve(images, mode):
        mode = tf.reshape(tf.cast(mode, tf.int32), [])
        check = tf.debugging.Assert(
            tf.logical_or(tf.equal(mode, INFERENCE_MODES["visible"]),
                          tf.equal(mode, INFERENCE_MODES["infrared"])),
            ["mode must be 1 (visible) or 2 (infrared), got", mode])
        with tf.control_dependencies([check]):
            is_infrared = tf.equal(mode, INFERENCE_MODES["infrared"])
        return tf.cond(is_infrared, lambda: infrared(images), lambda: visible(images))

    function = tf.function(serve, input_signature=[_image_spec(model),
                                                   tf.TensorSpec([], tf.int32, name="mode")])
    return {"serving_default": function, **branches}


def _export_savedmodel(model, path):
    functions = serving_functions(model)
    module = tf.Module()
    # Track the variables only: the traced functions capture them, and nothing else of the
    # Keras model is serialised.
    module.variables_to_save = list(model.weights)
    for name, function in functions.items():
        setattr(module, name, function)
    signatures = {name: function.get_concrete_function()
                  for name, function in functions.items()}
    tf.saved_model.save(module, path, signatures=signatures)
    return path


def onnx_paths(model, output_folder):
    """``{name: path}`` of the ONNX files written for ``model`` (``serving_default``, or
    ``visible`` and ``infrared`` for models with a mode input)."""
    if not uses_mode(model):
        return {"serving_default": os.path.join(output_folder, ONNX_FILE)}
    stem = os.path.splitext(ONNX_FILE)[0]
    return {name: os.path.join(output_folder, f"{stem}_{name}.onnx") for name in INFERENCE_MODES}


def _export_onnx(model, output_folder):
    try:
        import tf2onnx
    except ImportError:
        raise ImportError("--export_formats onnx needs tf2onnx (the optional extra): "
                          "pip install -e .[onnx]") from None
    functions = serving_functions(model)
    paths = onnx_paths(model, output_folder)
    for name, path in paths.items():
        function = functions[name]
        convert = functools.partial(tf2onnx.convert.from_function, function,
                                    input_signature=function.input_signature, opset=ONNX_OPSET,
                                    output_path=path)
        try:
            # Fast: tf2onnx's graph optimisers without a deep copy of the whole graph (with
            # the weights) before each of them, which is most of the conversion time.
            with _environment(TF2ONNX_CATCH_ERRORS="FALSE"):
                convert()
        except Exception as error:  # noqa: BLE001 (sorted below: nothing is swallowed)
            optimiser = _failed_tf2onnx_optimiser(error)
            if optimiser is None:
                raise ExportError("onnx", error, name) from error
            _LOGGER.warning("ONNX export (%s): the tf2onnx optimiser %s failed (%s: %s); "
                            "converting again, skipping the optimisers that fail", name,
                            optimiser, type(error).__name__, error)
            try:
                with _environment(TF2ONNX_CATCH_ERRORS=None):
                    convert()
            except Exception as second:  # noqa: BLE001 (reported as ExportError)
                raise ExportError("onnx", second, name) from second
    return paths["serving_default"] if len(paths) == 1 else output_folder


def _failed_tf2onnx_optimiser(error):
    """The name of the tf2onnx graph optimiser (``optimize_transpose``, ...) that raised
    ``error`` inside ``tf2onnx.optimizer.optimize_graph``, or ``None`` when the error came from
    elsewhere (the conversion proper)."""
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        path = frame.f_code.co_filename.replace(os.sep, "/")
        if frame.f_code.co_name == "optimize_graph" and "tf2onnx/optimizer/" in path:
            return str(frame.f_locals.get("name", "unknown"))
        traceback = traceback.tb_next
    return None


def tflite_paths(model, output_folder, quantization="float32"):
    """``{name: path}`` of the LiteRT files written for ``model`` with ``quantization``
    (``serving_default``, or ``visible`` and ``infrared`` for models with a mode input)."""
    _check_quantization(quantization)
    suffix = "" if quantization == "float32" else f"_{quantization}"
    if not uses_mode(model):
        return {"serving_default": os.path.join(output_folder, f"{TFLITE_STEM}{suffix}.tflite")}
    return {name: os.path.join(output_folder, f"{TFLITE_STEM}_{name}{suffix}.tflite")
            for name in INFERENCE_MODES}


def _check_quantization(quantization):
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"--tflite_quantization={quantization!r}: expected one of "
                         f"{', '.join(TFLITE_QUANTIZATIONS)}.")


def _tflite_converter(function, model, quantization):
    # The converter saves its trackable object first: a module holding only the variables
    # (the Keras model's serialisation took ~75 of the ~100 s of an MSINet conversion).
    module = tf.Module()
    module.variables_to_save = list(model.weights)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], module)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        # Dynamic range: int8 weights; no representative dataset, activations stay float.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter


def _export_tflite(model, output_folder, quantization):
    paths = tflite_paths(model, output_folder, quantization)
    functions = serving_functions(model)
    for name, path in paths.items():
        try:
            flatbuffer = _tflite_converter(functions[name], model, quantization).convert()
        except Exception as error:  # noqa: BLE001 (reported as ExportError)
            raise ExportError("tflite", error, f"{name}, {quantization}") from error
        with open(path, "wb") as handle:
            handle.write(flatbuffer)
    return paths["serving_default"] if len(paths) == 1 else output_folder


def tflite_interpreter(path, num_threads=None):
    """A LiteRT interpreter of ``path``: ``ai_edge_litert.interpreter`` when installed, else
    ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(path), num_threads=num_threads)


def tflite_features(interpreter, images):
    """Run a LiteRT inference model (``interpreter``: a path or a
    :func:`tflite_interpreter`) on float32 NHWC ``images``; returns the features (numpy). The
    input is resized to the batch when its size changes."""
    if isinstance(interpreter, (str, os.PathLike)):
        interpreter = tflite_interpreter(interpreter)
    images = np.asarray(images, dtype=np.float32)
    detail = interpreter.get_input_details()[0]
    if tuple(detail["shape"]) != images.shape:
        interpreter.resize_tensor_input(detail["index"], images.shape)
        interpreter.allocate_tensors()
    elif not getattr(interpreter, "_reid_allocated", False):
        interpreter.allocate_tensors()
    interpreter._reid_allocated = True  # noqa: SLF001 (allocate once per shape)
    interpreter.set_tensor(detail["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@contextlib.contextmanager
def _environment(**variables):
    """Set (``None``: unset) environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def export_inference_model(model, output_folder, export_format, tflite_quantization="float32"):
    """Write ``model`` in ``export_format`` (``h5``, ``savedmodel``, ``onnx`` or ``tflite``,
    the latter with ``tflite_quantization``) under ``output_folder``; returns the path
    written (the folder for the per-mode ONNX and LiteRT files, see :func:`onnx_paths` and
    :func:`tflite_paths`). A failed conversion raises :class:`ExportError`."""
    if export_format not in FORMATS:
        raise ValueError(f"--export_formats: unknown format {export_format!r}; expected one of "
                         f"{', '.join(FORMATS)}.")
    _check_quantization(tflite_quantization)
    os.makedirs(output_folder, exist_ok=True)
    if export_format == "h5":
        path = os.path.join(output_folder, "inference_model.h5")
        model.save_weights(path)
        return path
    if export_format == "savedmodel":
        return _export_savedmodel(model, os.path.join(output_folder, SAVEDMODEL_FOLDER))
    if export_format == "tflite":
        return _export_tflite(model, output_folder, tflite_quantization)
    return _export_onnx(model, output_folder)
