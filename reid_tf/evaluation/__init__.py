"""ReID evaluation: distances, CMC/mAP/mINP, k-reciprocal re-ranking and dataset protocols.

Pure numpy/scipy (no TensorFlow). The protocol functions take already-extracted features:

* :func:`evaluate_standard` — Market-1501 semantics (``protocol="standard"``);
* :func:`evaluate_vehicleid` — no camera removal, averaged over query/gallery trials;
* :func:`evaluate_sysu_mm01` — CM-NAS SYSU-MM01 rules, averaged over gallery trials;
* :func:`evaluate_regdb` — one RegDB trial; :func:`average_results` averages trials.

At scale: :func:`cmc_map_from_features` ranks query chunk by query chunk (no Q × G matrix; the
protocols use it whenever re-ranking is off), and
:func:`reid_tf.evaluation.reranking_sparse.rerank_cmc_map_from_features` is the k-reciprocal
re-ranking in bounded memory, which the protocols switch to when the dense one's (Q+G)²
matrices would exceed ``rerank_memory_budget``.

``PROTOCOL_FUNCTIONS`` maps the protocol names of :data:`reid_tf.data.registry.PROTOCOLS` to
these functions.
"""
from reid_tf.evaluation.distance import METRICS, l2_normalize, pairwise_distance  # noqa: F401
from reid_tf.evaluation.metrics import cmc_map, sysu_mm01_cmc_map  # noqa: F401
from reid_tf.evaluation.reranking import re_ranking  # noqa: F401
from reid_tf.evaluation.chunked import cmc_map_from_features  # noqa: F401
from reid_tf.evaluation.protocols import (  # noqa: F401
    PROTOCOL_FUNCTIONS,
    RANKS,
    average_results,
    evaluate_regdb,
    evaluate_standard,
    evaluate_sysu_mm01,
    evaluate_vehicleid,
)
