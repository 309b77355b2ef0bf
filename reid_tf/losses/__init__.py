"""Loss functions shared by the model families (triplet, cross-entropy, flipping)."""
from reid_tf.losses.classification import cross_entropy  # noqa: F401
from reid_tf.losses.triplet import batch_hard_triplet, pairwise_euclidean  # noqa: F401
from reid_tf.losses.flipping import flipping_loss  # noqa: F401
