"""Architecture search for re-identification networks (``python -m nas.search``).

* :mod:`nas.model_search` — the MSI search space: search cell, SearchCNN and its α;
* :mod:`nas.tcm` — TCM: the twins data split and the cluster memories;
* :mod:`nas.architect` — the architecture step (first order as the reference, or unrolled);
* :mod:`nas.genotypes` — genotype derivation, JSON files, α history and heatmap;
* :mod:`nas.searcher` — search-space interface, bilevel step and the resumable search loop;
* :mod:`nas.search` — configuration, flags and the command line.
"""
