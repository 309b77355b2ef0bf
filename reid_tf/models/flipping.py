"""The generic training model with the FlipReID flip structure, and test-time flip averaging.

:func:`build_training_model` wraps ANY embedding model (FlipReID, MSINet, CM-NAS) and head
model following the :class:`~reid_tf.models.base.ReIDModels` contract (spec flipreid.md
section 5.7):

* without flipping: ``e = embedding_model(x)``, outputs ``{"embeddings": e, "logits": ...}``;
* with flipping: a named :class:`~reid_tf.models.layers.HorizontalFlip` layer mirrors the
  images along the width axis, the same embedding model runs twice (two independent passes,
  so in training mode each pass uses its own BatchNormalization batch statistics),
  ``m_i = (f_i + g_i) / 2`` feeds the head, and the outputs also hold
  ``"embeddings_original"`` (``f``) and ``"embeddings_flipped"`` (``g``) so the trainer adds
  ``reid_tf.losses.flipping_loss(f, g)``.

The flip adds no weights, so weight files are interchangeable between training models built
with and without it.
"""
import tensorflow as tf
import tf_keras as keras

from reid_tf.models.base import as_list
from reid_tf.models.layers import HorizontalFlip

RESERVED_KEYS = ("embeddings", "logits", "embeddings_original", "embeddings_flipped")


def _fresh_inputs(model):
    """New Keras inputs with the same specs and names as ``model``'s inputs."""
    inputs = []
    for tensor, name in zip(model.inputs, model.input_names):
        inputs.append(keras.Input(type_spec=tensor.type_spec, name=name))
    return inputs


def _call(model, inputs):
    return model(inputs[0] if len(inputs) == 1 else list(inputs))


def _expect_dict(outputs, key, model):
    if not isinstance(outputs, dict) or key not in outputs:
        raise ValueError(f"Model {model.name!r} must return a dict with the key {key!r} "
                         f"(ReIDModels contract); got {type(outputs).__name__}"
                         + (f" with keys {sorted(outputs)}" if isinstance(outputs, dict) else "")
                         + ".")
    return outputs


def _extras(outputs, model, taken):
    extras = {}
    for key, value in outputs.items():
        if key in ("embeddings", "logits"):
            continue
        if key in taken or key in extras:
            raise ValueError(f"Output key {key!r} of model {model.name!r} clashes with another "
                             f"output of the training model (reserved: {RESERVED_KEYS}).")
        extras[key] = value
    return extras


def build_training_model(embedding_model, head_model, use_horizontal_flipping_inside_model,
                         name="training_model"):
    """Assemble the training model around ``embedding_model`` and ``head_model``.

    Args:
      embedding_model: inputs -> ``{"embeddings": [tensors], ...extras}``. Its first input is
        the NHWC image batch; further inputs (e.g. CM-NAS's ``mode``) are passed unchanged.
      head_model: ``[embedding tensors]`` -> ``{"logits": [tensors], ...extras}``.
      use_horizontal_flipping_inside_model: add the flip structure (see module docstring).
      name: Keras name of the model.

    Returns:
      A functional model with the same inputs as ``embedding_model`` (a single tensor input
      when it has one) and dict outputs ``{"embeddings": [m_i], "logits": [...], **extras}``
      plus, with flipping, ``"embeddings_original"`` and ``"embeddings_flipped"``. Extras come
      from the embedding model (original-image pass) and from the head model.
    """
    inputs = _fresh_inputs(embedding_model)
    if len(inputs[0].shape) != 4:
        raise ValueError(f"The first input of {embedding_model.name!r} must be an NHWC image "
                         f"batch, got shape {inputs[0].shape}.")
    original = _expect_dict(_call(embedding_model, inputs), "embeddings", embedding_model)
    original_embeddings = as_list(original["embeddings"])
    outputs = {}
    if use_horizontal_flipping_inside_model:
        flipped_images = HorizontalFlip(name="horizontal_flip")(inputs[0])
        flipped = _expect_dict(_call(embedding_model, [flipped_images] + inputs[1:]),
                               "embeddings", embedding_model)
        flipped_embeddings = as_list(flipped["embeddings"])
        merged = [keras.layers.Average(name=f"merged_embedding_{index}")([first, second])
                  for index, (first, second)
                  in enumerate(zip(original_embeddings, flipped_embeddings))]
        outputs["embeddings_original"] = original_embeddings
        outputs["embeddings_flipped"] = flipped_embeddings
    else:
        merged = original_embeddings
    head = _expect_dict(head_model(list(merged)), "logits", head_model)
    outputs = {"embeddings": merged, "logits": as_list(head["logits"]), **outputs}
    outputs.update(_extras(original, embedding_model, set(outputs)))
    outputs.update(_extras(head, head_model, set(outputs)))
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=name)


def mirror_images(images):
    """Mirror an NHWC batch (tensor or numpy array) along the width axis."""
    return tf.reverse(tf.convert_to_tensor(images), axis=[2])


def concatenate_features(outputs):
    """Concatenate an inference model's outputs (tensor or list) along the last axis."""
    outputs = [tf.convert_to_tensor(item) for item in as_list(outputs)]
    return outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=-1)


def inference_features(inference_model, images, extra_inputs=(), training=False):
    """Evaluation features: ``inference_model`` outputs concatenated in order.

    ``extra_inputs`` are passed after the images (e.g. CM-NAS's modality mode).
    """
    extra_inputs = list(extra_inputs)
    model_inputs = [images] + extra_inputs if extra_inputs else images
    return concatenate_features(inference_model(model_inputs, training=training))


def flip_tta_features(inference_model, images, extra_inputs=(), training=False):
    """Test-time flip averaging: mean of the features of ``images`` and of their mirror."""
    images = tf.convert_to_tensor(images)
    plain = inference_features(inference_model, images, extra_inputs, training)
    mirrored = inference_features(inference_model, mirror_images(images), extra_inputs,
                                  training)
    return (plain + mirrored) / 2.0
