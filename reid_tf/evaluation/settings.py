"""How a model is evaluated: :class:`EvaluationSettings`, the typed input of
:class:`reid_tf.evaluation.dataset_evaluator.DatasetEvaluator`.

``solution.py`` builds it from its flags (``reid_tf.cli.settings.evaluation_settings``); the
search builds it from its configuration (:mod:`nas.searcher`, :mod:`nas.spaces.bn_split`).
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """Attributes:
      image_height, image_width: the test image size.
      batch_size: test batch size.
      flip: average the features of each image and of its mirror (flip TTA).
      metric: ``cosine``, ``euclidean`` or ``sqeuclidean``; None: the protocol's own (cosine
        for the standard and VehicleID protocols, the references' dot product of normalised
        features for SYSU-MM01 and RegDB).
      normalize: L2-normalise the features before the distance; None: the protocol's own
        (the cross-modality protocols normalise, the others do not).
      use_re_ranking: k-reciprocal re-ranking (every protocol but VehicleID).
      rerank_memory_budget: bytes the dense re-ranking's (Q+G)² matrices may take; larger
        problems run the bounded-memory one (:mod:`reid_tf.evaluation.reranking_sparse`).
      trial_num: random gallery trials averaged (SYSU-MM01, VehicleID).
      sysu_shot: SYSU-MM01 gallery images per identity and camera.
      seed: the seed of the VehicleID trials.
      save_data_to_disk: also write ``test.npz`` (features, identities, cameras).
      workers: parallel image decoding calls of the test pipeline (None: tf.data's choice).
      resize: how test images are resized (:func:`reid_tf.data.images.read_image`).
    """

    image_height: int = 384
    image_width: int = 128
    batch_size: int = 64
    flip: bool = False
    metric: str = None
    normalize: bool = None
    use_re_ranking: bool = False
    rerank_memory_budget: int = 8 << 30
    trial_num: int = 10
    sysu_shot: int = 1
    seed: int = 0
    save_data_to_disk: bool = False
    workers: int = None
    resize: str = "opencv_bilinear"
