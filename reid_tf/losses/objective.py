"""The training objective of every model family, from an :class:`ObjectiveConfig`.

The training model returns a dict (``reid_tf.models.flipping.build_training_model``):
``embeddings`` (list), ``logits`` (list), and depending on the model ``embeddings_original`` /
``embeddings_flipped`` (flip structure), ``bnneck`` (post-BNNeck features), ``sam_scores``.

Terms (each reported separately, ``total`` is their sum):

* ``triplet`` — batch-hard triplet on every embedding (soft margin for FlipReID, hard margin
  with L2-normalised features for MSINet); for visible-infrared batches (first half visible,
  second half infrared, identity aligned) the four-term CM-NAS form on the pre-BNNeck features;
* ``classification`` — softmax cross-entropy (optional label smoothing) on every logits output;
* ``flipping`` — FlipReID's MSE between the embeddings of the image and of its mirror;
* ``sam`` — MSINet's spatial alignment loss times ``sam_ratio`` (added to the global branch);
* ``sp`` and ``cmmd`` — CM-NAS's correlation terms on the post-BNNeck features.

Under a multi-replica strategy the trainer calls the objective on the all-gathered outputs and
labels (the global batch, so every term equals its one-device value), except the outputs named
in :attr:`Objective.per_replica_outputs`: MSINet's SAM scores are made inside the model with
the replica's own batch as the kernel, so the SAM term is computed on each replica with that
replica's labels (``local_labels``) and the reported value is the mean over replicas.
"""
import dataclasses

import tensorflow as tf

from reid_tf.losses.classification import cross_entropy
from reid_tf.losses.flipping import flipping_loss
from reid_tf.losses.precision import at_least_float32
from reid_tf.losses.triplet import batch_hard_triplet


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    triplet_margin: float = None          # None: soft margin
    triplet_normalize: bool = False
    triplet_exclude_self: bool = False    # FlipReID masks the anchor out of its positives
    triplet_clamp: bool = True            # False: FlipReID's sqrt(sum((a-b)^2) + 1e-12)
    label_smoothing: float = 0.0
    cross_modality: bool = False
    sp_weight: float = 5.0
    cmmd_weight: float = 0.05
    images_per_identity: int = 4
    sam_mode: str = "none"
    sam_ratio: float = 2.0


class Objective:
    """``objective(outputs, labels) -> {"total": ..., "triplet": ..., ...}`` (float32; float64
    for a float64 model)."""

    # Outputs that describe one replica's part of the batch only (see the module docstring).
    per_replica_outputs = ("sam_scores",)

    def __init__(self, config):
        self.config = config

    def _triplet(self, embedding, labels):
        c = self.config
        embedding = at_least_float32(embedding)
        if c.cross_modality:
            from reid_tf.losses.cmnas import cross_modality_triplet
            return cross_modality_triplet(embedding, labels, margin=c.triplet_margin,
                                          normalize=c.triplet_normalize)
        return batch_hard_triplet(embedding, labels, margin=c.triplet_margin,
                                  normalize=c.triplet_normalize,
                                  exclude_self=c.triplet_exclude_self, clamp=c.triplet_clamp)

    def __call__(self, outputs, labels, local_labels=None):
        """The loss terms and their sum ``total``.

        ``local_labels``: the labels of the replica's own part of the batch, for the
        :attr:`per_replica_outputs` (default ``labels``).
        """
        c = self.config
        labels = tf.cast(labels, tf.int32)
        local_labels = labels if local_labels is None else tf.cast(local_labels, tf.int32)
        losses = {}
        losses["triplet"] = tf.add_n([self._triplet(e, labels) for e in outputs["embeddings"]])
        if outputs.get("logits"):
            losses["classification"] = tf.add_n([
                cross_entropy(logits, labels, c.label_smoothing) for logits in outputs["logits"]])
        if "embeddings_original" in outputs:
            losses["flipping"] = flipping_loss(outputs["embeddings_original"],
                                               outputs["embeddings_flipped"])
        if c.sam_mode != "none" and outputs.get("sam_scores") is not None:
            from reid_tf.losses.sam import spatial_alignment_loss
            losses["sam"] = c.sam_ratio * spatial_alignment_loss(
                at_least_float32(outputs["sam_scores"]), local_labels, c.sam_mode)
        if c.cross_modality and (c.sp_weight or c.cmmd_weight):
            from reid_tf.losses.cmnas import cmmd_loss, sp_loss
            features = at_least_float32((outputs.get("bnneck") or outputs["embeddings"])[0])
            visible, infrared = tf.split(features, 2, axis=0)
            if c.sp_weight:
                losses["sp"] = c.sp_weight * sp_loss(visible, infrared)
            if c.cmmd_weight:
                losses["cmmd"] = c.cmmd_weight * cmmd_loss(visible, infrared,
                                                           c.images_per_identity)
        losses["total"] = tf.add_n(list(losses.values()))
        return losses
