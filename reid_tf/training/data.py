"""The trainer's view of the training data: one ``tf.data`` epoch at a time, resumable.

Wraps a PK sampler (:mod:`reid_tf.data.sampler`; the cross-modality form for visible-infrared
data) and :func:`reid_tf.data.pipeline.make_training_dataset`. The sampler's batches of epoch
``e`` are a pure function of the seed and ``e``; the checkpoint stores the sampler state at the
start of the next epoch so a resumed run continues without replaying earlier epochs.
"""
import json

from reid_tf.data.pipeline import make_label_map, make_training_dataset
from reid_tf.data.sampler import CrossModalitySampler, PKSampler


class TrainingInput:
    """Epoch datasets of ``(images, labels)`` for :class:`reid_tf.training.trainer.Trainer`."""

    def __init__(self, train_dataframe, identity_num_per_batch, image_num_per_identity,
                 steps_per_epoch, height, width, augmentation, seed=0, policy="flipreid",
                 cross_modality=False, label_map=None, workers=None, cache_images=False,
                 resize="opencv_bilinear"):
        self.dataframe = train_dataframe.reset_index(drop=True)
        steps = steps_per_epoch if steps_per_epoch else None
        if cross_modality:
            self.sampler = CrossModalitySampler.from_dataframe(
                self.dataframe, identity_num_per_batch, image_num_per_identity,
                steps_per_epoch=steps, seed=seed)
        else:
            self.sampler = PKSampler.from_dataframe(
                self.dataframe, identity_num_per_batch, image_num_per_identity,
                steps_per_epoch=steps, seed=seed, policy=policy)
        self.label_map = label_map if label_map is not None else make_label_map(self.dataframe)
        self.height = height
        self.width = width
        self.augmentation = augmentation
        self.seed = seed
        self.workers = workers
        self.cache_images = cache_images
        self.resize = resize
        self._current_epoch = 0
        self._next_epoch = 0

    @property
    def num_classes(self):
        return len(self.label_map)

    @property
    def cross_modality(self):
        """Whether batches are visible-infrared (``[visible P*K, infrared P*K]``)."""
        return isinstance(self.sampler, CrossModalitySampler)

    @property
    def identities_per_batch(self):
        """``P``: identities per batch (per modality for visible-infrared batches)."""
        return int(self.sampler.P)

    @property
    def batch_size(self):
        """Images per training batch (``2 * P * K`` for visible-infrared batches)."""
        size = self.sampler.batch_size
        return 2 * size if isinstance(self.sampler, CrossModalitySampler) else size

    @property
    def steps_per_epoch(self):
        """Batches in the epoch last asked for."""
        return self.sampler.num_batches(self._current_epoch)

    def epoch_dataset(self, epoch_index, start_step=0):
        self._current_epoch = int(epoch_index)
        self._next_epoch = int(epoch_index) + 1
        return make_training_dataset(
            self.dataframe, self.sampler, self.height, self.width, self.augmentation,
            self.label_map, self.seed, epoch_index=epoch_index, start_step=start_step,
            num_parallel_calls=self.workers, cache_images=self.cache_images, resize=self.resize)

    def get_state(self):
        """JSON text: the sampler state at the start of the next epoch."""
        return json.dumps(self.sampler.get_state(self._next_epoch))

    def set_state(self, text):
        state = json.loads(text)
        self.sampler.set_state(state)
        self._next_epoch = int(state["epoch_index"])
