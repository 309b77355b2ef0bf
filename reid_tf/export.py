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
  the optional tf2onnx (``pip install -e .[onnx]``).

Models with a ``mode`` input (CM-NAS, the switchable MSINet) are exported for inference, where
the mode says which modality the batch holds: 1 visible, 2 infrared (mode 0, the mixed
training batch, is not an inference mode). Each exported function runs the model with its mode
fixed at trace time, as the evaluator does (static BN branches). The SavedModel's
``serving_default`` takes ``images`` and an int32 scalar ``mode`` (1 or 2; a ``tf.cond``
between the two functions), and its signatures ``visible`` and ``infrared`` take the images
alone. ONNX gets one file per mode, ``inference_model_visible.onnx`` and
``inference_model_infrared.onnx`` (tf2onnx does not convert the convolutions inside an ONNX
``If`` correctly), each with the input ``images`` only.
"""
import contextlib
import functools
import os
import weakref

import tensorflow as tf

FORMATS = ("h5", "savedmodel", "onnx")
INFERENCE_MODES = {"visible": 1, "infrared": 2}
SAVEDMODEL_FOLDER = "inference_model_savedmodel"
ONNX_FILE = "inference_model.onnx"
ONNX_OPSET = 17


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
        except Exception:  # noqa: BLE001 (an optimiser failed: convert again, skipping it)
            with _environment(TF2ONNX_CATCH_ERRORS=None):
                convert()
    return paths["serving_default"] if len(paths) == 1 else output_folder


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


def export_inference_model(model, output_folder, export_format):
    """Write ``model`` in ``export_format`` (``h5``, ``savedmodel`` or ``onnx``) under
    ``output_folder``; returns the path written (the folder for the per-mode ONNX files,
    see :func:`onnx_paths`)."""
    if export_format not in FORMATS:
        raise ValueError(f"--export_formats: unknown format {export_format!r}; expected one of "
                         f"{', '.join(FORMATS)}.")
    os.makedirs(output_folder, exist_ok=True)
    if export_format == "h5":
        path = os.path.join(output_folder, "inference_model.h5")
        model.save_weights(path)
        return path
    if export_format == "savedmodel":
        return _export_savedmodel(model, os.path.join(output_folder, SAVEDMODEL_FOLDER))
    return _export_onnx(model, output_folder)
