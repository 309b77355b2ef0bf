"""Architecture search for re-identification networks (``python -m nas.search``), laid out as
DARTS' ``cnn/``, imports pointing one way (each module only imports the ones above it here):

* :mod:`nas.config` — :class:`~nas.config.SearchConfig`, every setting of a search, validated;
* :mod:`nas.alpha` — the architecture weights α: genotype derivation, α history, heatmaps;
* :mod:`nas.model_search` — the MSI search network (search cells, ``SearchCNN``, its α);
* :mod:`nas.tcm` — TCM: the twins data split, the cluster memories, the endless valid stream;
* :mod:`nas.architect` — the architecture gradient (first order as the reference, or unrolled);
* :mod:`nas.bilevel` — the per-iteration bilevel updates as traced functions;
* :mod:`nas.spaces` — the search spaces, one module each (``msi``, ``bn_split``), their
  interface (:mod:`nas.spaces.base`) and registry;
* :mod:`nas.searcher` — the search loop, the training engine with a bilevel step;
* :mod:`nas.search` — the command line (flags -> config -> searcher).

The operations themselves are MSINet's (:mod:`reid_tf.models.msinet_ops`) and the discrete
genotypes are :mod:`reid_tf.models.genotypes`.
"""
