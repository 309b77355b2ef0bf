"""Using a trained model: features of images (:class:`FeatureExtractor`), features folders on
disk (:func:`extract_to_folder`, :class:`FeaturesFolder`, :func:`load_features`).

Above the evaluation layer (it extracts exactly as the evaluation does) and below the command
lines (``python -m reid_tf.extract``)."""
from reid_tf.retrieval.extraction import ExtractionReport, extract_to_folder  # noqa: F401
from reid_tf.retrieval.extractor import FeatureExtractor  # noqa: F401
from reid_tf.retrieval.features_folder import (  # noqa: F401
    FeaturesFolder,
    FeaturesWriter,
    load_features,
    worker_share,
)
from reid_tf.retrieval.index import GalleryIndex  # noqa: F401
