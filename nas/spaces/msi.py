"""The MSI search space with TCM (msinet.md §5, §6): MSINet's multi-scale interactions.

Data: the twins split of the training rows (:func:`nas.tcm.separate_trainval`); both subsets
use the training augmentation (recipe ``msinet``) and their own PK sampler (``msinet``
policy); the valid stream is endless. Network: :class:`nas.model_search.SearchNetwork` with
``3q`` classifier classes. Losses: train memory (``3q`` slots) for the weights, valid memory
(``P − q`` slots) for α; each memory is updated after the gradient of its loss. Result: the
genotype (``genotype.json``).
"""
import tensorflow as tf

from nas.alpha import derive_genotype, write_genotype
from nas.model_search import SearchNetwork
from nas.spaces.base import VALID_SEED_OFFSET, SearchSpace
from nas.tcm import ClusterMemory, EndlessBatches, separate_trainval
from reid_tf.runtime import distribute


class MsiSearchSpace(SearchSpace):
    """The MSI search space with TCM (msinet.md §5, §6).

    Data: the twins split of the training rows (:func:`nas.tcm.separate_trainval`); both
    subsets use the training augmentation (recipe ``msinet``) and their own PK sampler
    (``msinet`` policy); the valid stream is endless. Network: :class:`SearchNetwork` with
    ``3q`` classifier classes. Losses: train memory (``3q`` slots) for the weights, valid memory
    (``P − q`` slots) for α; each memory is updated after the gradient of its loss.
    """

    name = "msi"
    result_file_name = "genotype.json"
    supports_replicas = True

    def __init__(self, config, dataframe, input_shape):
        from reid_tf.data.augmentation import build_augmentation
        from reid_tf.data.sampler import PKSampler
        from reid_tf.training.data import TrainingInput

        train = dataframe[dataframe["split"] == "train"].reset_index(drop=True)
        if len(train) == 0:
            raise ValueError(f"{config.dataset_name}: the dataset has no training images "
                             "(check --dataset_name and --root_folder_path).")
        self.split = separate_trainval(train, source=f"{config.dataset_name} training set")
        height, width = config.image_height, config.image_width
        augmentation = build_augmentation("msinet", height, width)
        P, K = config.identity_num_per_batch, config.image_num_per_identity
        for subset, table in (("train", self.split.train), ("valid", self.split.valid)):
            identities = table["identity_ID"].nunique()
            if identities < P:
                raise ValueError(
                    f"{config.dataset_name}: the TCM {subset} subset has {identities} identities, "
                    f"fewer than --identity_num_per_batch={P}; lower it or use a dataset with "
                    "more identities.")
        self.train_data = TrainingInput(
            self.split.train, P, K, config.steps_per_epoch, height, width, augmentation,
            seed=config.seed, policy="msinet", label_map=self.split.train_label_map,
            workers=config.workers, cache_images=config.cache_images,
            resize=config.resize_interpolation)
        valid_sampler = PKSampler.from_dataframe(self.split.valid, P, K, steps_per_epoch=None,
                                                 seed=config.seed + VALID_SEED_OFFSET,
                                                 policy="msinet")
        self.valid_data = EndlessBatches(
            self.split.valid, valid_sampler, height, width, augmentation,
            self.split.valid_label_map, seed=config.seed + VALID_SEED_OFFSET,
            workers=config.workers, cache_images=config.cache_images,
            resize=config.resize_interpolation)
        self._build_model(self.split.num_train_classes, self.split.num_valid_classes,
                          input_shape, config.seed)

    def _build_model(self, num_train_classes, num_valid_classes, input_shape, seed):
        self.network = SearchNetwork(num_train_classes, input_shape=input_shape, seed=seed)
        self.weights_model = self.network.training_model
        dimension = self.network.feature_dim
        self.train_memory = ClusterMemory(dimension, num_train_classes, name="train_memory")
        self.valid_memory = ClusterMemory(dimension, num_valid_classes, name="valid_memory")

    @classmethod
    def without_data(cls, num_train_classes, num_valid_classes, input_shape=(256, 128, 3),
                     seed=0):
        """The network, α and memories alone (no data split, ``train_data``/``valid_data``
        ``None``): for driving the steps with your own batches."""
        space = cls.__new__(cls)
        space.split = None
        space.train_data = space.valid_data = None
        space._build_model(num_train_classes, num_valid_classes, input_shape, seed)
        return space

    def summary(self):
        split = self.split
        return (f"TCM split: q = {split.q}; train {len(split.train)} images of "
                f"{split.num_train_classes} classes, valid {len(split.valid)} images of "
                f"{split.num_valid_classes} classes.")

    @property
    def weight_variables(self):
        return self.network.weight_variables

    @property
    def arch_variables(self):
        return self.network.arch_variables

    def _loss(self, memory, images, labels):
        outputs = self.network(images, training=True)
        loss, normalized = memory.loss(outputs["features"], labels)
        predictions = tf.argmax(outputs["logits"], axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)),
                                          tf.float32))
        return loss, {"normalized": normalized, "labels": labels, "accuracy": accuracy}

    def train_loss(self, images, labels):
        return self._loss(self.train_memory, images, labels)

    def valid_loss(self, images, labels):
        return self._loss(self.valid_memory, images, labels)

    def commit_train(self, aux):
        # Several replicas: each updates its copy with the whole batch, in global order.
        self.train_memory.update(*distribute.all_gather_batch((aux["normalized"],
                                                               aux["labels"])))

    def commit_valid(self, aux):
        self.valid_memory.update(*distribute.all_gather_batch((aux["normalized"],
                                                               aux["labels"])))

    def checkpoint_objects(self):
        return {"model": self.network.training_model, "alpha": self.network.alpha,
                "train_memory": self.train_memory, "valid_memory": self.valid_memory}

    def derive(self):
        return derive_genotype(self.network.alpha)

    def write_result(self, result, file_path):
        return write_genotype(result, file_path)

    def describe(self, result):
        return f"genotype = {result}"

    def architecture_arrays(self):
        return {"alpha": self.network.alpha.numpy(),
                "weights": self.network.relaxation_weights()}

    def embed(self, images):
        return self.network.embed(images)
