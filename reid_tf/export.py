"""Export an inference model: Keras ``.h5`` weights, a TensorFlow SavedModel, ONNX (tf2onnx).

The SavedModel and the ONNX model take normalised float32 NHWC images (and, for models with a
``mode`` input such as CM-NAS, an int32 scalar mode) and return the evaluation features.
"""
import os

import tensorflow as tf

FORMATS = ("h5", "savedmodel", "onnx")


def _input_signature(model):
    signature = []
    for tensor in model.inputs:
        shape = tensor.shape
        if len(shape) <= 1:  # a scalar-like mode input
            signature.append(tf.TensorSpec([], tensor.dtype, name=tensor.name.split(":")[0]))
        else:
            signature.append(tf.TensorSpec([None] + list(shape[1:]), tensor.dtype,
                                           name=tensor.name.split(":")[0]))
    return signature


def serving_function(model):
    """A ``tf.function`` returning ``{"features": ...}`` (the outputs concatenated)."""
    signature = _input_signature(model)

    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        if isinstance(outputs, (list, tuple)):
            outputs = tf.concat([tf.cast(output, tf.float32) for output in outputs], axis=-1)
        return {"features": tf.cast(outputs, tf.float32)}

    return tf.function(serve, input_signature=signature)


def export_inference_model(model, output_folder, export_format):
    """Write ``model`` in ``export_format`` under ``output_folder``; returns the path."""
    os.makedirs(output_folder, exist_ok=True)
    if export_format == "h5":
        path = os.path.join(output_folder, "inference_model.h5")
        model.save_weights(path)
        return path
    if export_format == "savedmodel":
        path = os.path.join(output_folder, "inference_model_savedmodel")
        function = serving_function(model)
        module = tf.Module()
        module.model = model
        module.serve = function
        tf.saved_model.save(module, path, signatures={"serving_default": function})
        return path
    if export_format == "onnx":
        try:
            import tf2onnx
        except ImportError:
            raise ImportError("ONNX export needs tf2onnx: pip install -e .[onnx]") from None
        path = os.path.join(output_folder, "inference_model.onnx")
        function = serving_function(model)
        tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                      opset=17, output_path=path)
        return path
    raise ValueError(f"Unknown export format {export_format!r}; expected one of {FORMATS}.")
