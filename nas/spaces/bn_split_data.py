"""The bilevel data split of the BN-split search (cmnas.md §11.2 [RECON]): the weights' part
``D_w`` and the architecture's part ``D_alpha`` of a visible-infrared training table.

* :func:`split_per_identity_half` (``--bn_split_data_split=per_identity_half``, default): a
  seeded half of every identity's images per modality to each part, so every identity is in
  both and the classifier loss stays valid on ``D_alpha``;
* :func:`split_official_val` (``official_val``, SYSU-MM01 only): the identities of
  ``exp/train_id.txt`` and of ``exp/val_id.txt`` (:func:`sysu_split_file`).
"""
import os

import numpy as np


def split_per_identity_half(train_dataframe, seed=0, source="training set"):
    """Split training rows per identity and modality into ``(D_w, D_alpha)``.

    For every (identity, modality) group, in ascending identity order and ``infrared`` before
    ``visible``, a permutation drawn from ``numpy.random.default_rng(seed)`` (one generator for
    all groups) sends its first ``ceil(n / 2)`` rows to ``D_w`` and the remaining
    ``floor(n / 2)`` to ``D_alpha``. Identities with fewer than 2 rows in either modality go
    to ``D_w`` whole (they could not be in both parts). Both tables keep the input's row order
    and its index is reset.

    Raises ValueError (naming ``source``) for a table without ``identity_ID``/``modality``
    columns or when no identity can be halved.
    """
    for column in ("identity_ID", "modality"):
        if column not in getattr(train_dataframe, "columns", ()):
            raise ValueError(f"{source}: the bn_split data split needs a table with a "
                             f"{column} column.")
    table = train_dataframe.reset_index(drop=True)
    identities = table["identity_ID"].to_numpy()
    modalities = table["modality"].astype(str).to_numpy()
    counts = table.groupby(["identity_ID", "modality"]).size()
    halvable = set()
    for identity in np.unique(identities):
        sizes = [int(counts.get((identity, modality), 0)) for modality in ("infrared", "visible")]
        if min(sizes) >= 2:
            halvable.add(identity)
    if not halvable:
        raise ValueError(f"{source}: no identity has at least 2 visible and 2 infrared training "
                         "images, so none can be split in halves (--bn_split_data_split="
                         "per_identity_half).")
    generator = np.random.default_rng(seed)
    to_alpha = np.zeros(len(table), dtype=bool)
    for identity in sorted(halvable):
        for modality in ("infrared", "visible"):
            rows = np.flatnonzero((identities == identity) & (modalities == modality))
            order = rows[generator.permutation(len(rows))]
            to_alpha[order[(len(rows) + 1) // 2:]] = True
    return (table[~to_alpha].reset_index(drop=True), table[to_alpha].reset_index(drop=True))


def sysu_split_file(train_dataframe, name="val"):
    """Path of SYSU-MM01's ``exp/<name>_id.txt`` for a table read by the SYSU-MM01 loader
    (image paths ``<root>/SYSU-MM01/cam<K>/<id>/<file>``)."""
    first = str(train_dataframe["image_file_path"].iloc[0])
    dataset_folder = os.path.dirname(os.path.dirname(os.path.dirname(first)))
    return os.path.join(dataset_folder, "exp", f"{name}_id.txt")


def split_official_val(train_dataframe, val_identities, source="training set"):
    """``(D_w, D_alpha)``: the rows of identities not in ``val_identities`` and those in it."""
    table = train_dataframe.reset_index(drop=True)
    in_val = table["identity_ID"].isin([int(value) for value in val_identities]).to_numpy()
    if not in_val.any() or in_val.all():
        raise ValueError(f"{source}: the official validation identities select "
                         f"{int(in_val.sum())} of {len(table)} training images; both parts "
                         "must be non-empty (--bn_split_data_split=official_val).")
    return table[~in_val].reset_index(drop=True), table[in_val].reset_index(drop=True)


def describe_part(name, table):
    visible = int((table["modality"] == "visible").sum())
    return (f"{name}: {len(table)} images ({visible} visible, {len(table) - visible} infrared) "
            f"of {table['identity_ID'].nunique()} identities")
