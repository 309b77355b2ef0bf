"""Model families of reid-tf; every family returns a :class:`reid_tf.models.base.ReIDModels`.

Kept light on purpose: nothing is imported here, so ``import reid_tf.models`` does not pull
in TensorFlow, tf2cv or any family. Import the modules you need, e.g.::

    from reid_tf.models.base import ReIDModels
    from reid_tf.models.flipreid import build_flipreid
    from reid_tf.models.flipping import build_training_model, flip_tta_features

Modules: ``base`` (contract, layer walking, freezing), ``layers`` (GeM pooling, clipping,
stripes, mirror), ``backbones`` (tf2cv backbones as blocks, ImageNet weight files),
``flipreid`` (the FlipReID network), ``flipping`` (training model with the flip structure,
test-time flip averaging), ``regularization`` (explicit L2 penalties); ``msinet*``, ``cmnas``
and ``switchable_bn`` hold the other families.
"""
