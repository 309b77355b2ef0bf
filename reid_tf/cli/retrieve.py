"""``python -m reid_tf.retrieve``: queries + a gallery index -> the top-k of every query (CSV)
and a rank-list picture.

    python -m reid_tf.retrieve --index_folder=runs/index --run_folder=output/Synthetic_msinet \\
        --images_folder=/data/queries --results_csv=runs/top10.csv
    python -m reid_tf.retrieve --index_folder=I --run_folder=RUN --query_images=a.jpg,b.jpg ...
    python -m reid_tf.retrieve --index_folder=I --query_features_folder=F --results_csv=R.csv

The queries: images (``--images_folder``, recursive; ``--images_csv``, a custom-dataset CSV;
``--dataset_split`` of ``--dataset_name``; ``--query_images``, comma-separated files),
extracted with the model named as ``python -m reid_tf.extract`` names it (``--run_folder``,
``--weights_file_path`` with ``solution.py``'s model flags, or ``--savedmodel_path``), or a
features folder of ``python -m reid_tf.extract`` (``--query_features_folder``, no model
needed). Unreadable query images are reported by path and left out.

``--results_csv`` gets one row per query and rank: ``query_row``, ``query_path``, ``rank``
(1 = nearest), ``gallery_row`` (the index's row), ``gallery_path``, ``distance`` (the index's
distance), then ``query_identity``, ``query_camera``, ``query_modality`` and ``gallery_*`` of
the same where known. An approximate index that finds fewer than ``--top_k`` neighbours gives
fewer rows for that query. ``--rank_list_file`` (default: beside the CSV, ``<name>_rank_list
.png``) shows the first ``--visualize_queries`` queries with their matches and distances
(:func:`reid_tf.visualization.draw_ranked_results`; green/red: same/other identity where both
are known). When the index records the model its gallery came from (``sources.json``) and the
queries' model differs, a warning says so.
"""
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from absl import flags

from reid_tf.cli import app as cli_app
from reid_tf.cli import extract as cli_extract
from reid_tf.cli import index as cli_index
from reid_tf.runtime.errors import UsageError

FLAGS = flags.FLAGS
IMAGE_SOURCES = ("images_folder", "images_csv", "dataset_split", "query_images")
MODEL_FLAGS = ("run_folder", "weights_file_path", "savedmodel_path")
# Metadata columns reported for the query and the gallery side (where known).
REPORTED = ("identity", "camera", "modality")


def define_retrieve_flags():
    """The retrieval's flags: the model and images of the extraction, the index, the output."""
    cli_extract.define_model_flags()
    cli_extract.define_image_flags()
    cli_index.define_index_folder_flag()
    if "top_k" in FLAGS:
        return
    flags.DEFINE_list("query_images", [], "Query image files, comma-separated.")
    flags.DEFINE_string("query_features_folder", "", "A features folder of the queries "
                        "(python -m reid_tf.extract) instead of images.")
    flags.DEFINE_integer("top_k", 10, "Gallery matches per query.")
    flags.DEFINE_string("results_csv", "", "The CSV of the top-k matches to write.")
    flags.DEFINE_integer("visualize_queries", 8, "Queries shown in the rank-list picture "
                         "(the first ones); 0: no picture.")
    flags.DEFINE_string("rank_list_file", "", "The rank-list picture (.png); default: "
                        "<results_csv without .csv>_rank_list.png.")
    flags.DEFINE_integer("search_nprobe", 0, "IVF cells searched (faiss_ivf, faiss_ivfpq "
                         "indexes); 0: the index's own.")
    flags.DEFINE_integer("query_chunk_size", 1024, "Query images extracted at a time.")


def _check(values):
    if not values.index_folder:
        raise UsageError("--index_folder: the gallery index (python -m reid_tf.index) is "
                         "required.")
    if not os.path.isdir(os.path.expanduser(values.index_folder)):
        raise FileNotFoundError(f"--index_folder: no such folder {values.index_folder}.")
    for name, low in (("top_k", 1), ("visualize_queries", 0), ("search_nprobe", 0),
                      ("query_chunk_size", 1)):
        if getattr(values, name) < low:
            raise UsageError(f"--{name}={getattr(values, name)}: must be >= {low}.")
    if not values.results_csv:
        raise UsageError("--results_csv: where to write the top-k matches is required.")
    sources = [name for name in IMAGE_SOURCES + ("query_features_folder",)
               if getattr(values, name)]
    if len(sources) != 1:
        raise UsageError("give the queries with exactly one of --images_folder, --images_csv, "
                         "--dataset_split, --query_images or --query_features_folder (got "
                         f"{', '.join('--' + name for name in sources) or 'none'}).")
    if values.query_features_folder:
        given = [name for name in MODEL_FLAGS if getattr(values, name)]
        if given:
            raise UsageError(f"--{given[0]}: the queries are the features of "
                             "--query_features_folder, no model is used; drop it.")
        if not os.path.isdir(os.path.expanduser(values.query_features_folder)):
            raise FileNotFoundError(f"--query_features_folder: no such folder "
                                    f"{values.query_features_folder}.")
        return
    cli_extract.check_model_flags(values)
    if values.images_folder and not os.path.isdir(os.path.expanduser(values.images_folder)):
        raise FileNotFoundError(f"--images_folder: no such folder {values.images_folder}.")
    for path in values.query_images:
        if not os.path.isfile(os.path.expanduser(path)):
            raise FileNotFoundError(f"--query_images: no such file {path}.")


def _query_table(values):
    if values.query_images:
        table = pd.DataFrame({"image_file_path": [os.path.expanduser(path)
                                                  for path in values.query_images]})
        if values.modality:
            table["modality"] = values.modality
        return table
    return cli_extract.images_table(values)


def query_features(values):
    """``(features, metadata, model description, seconds, unreadable)`` of the queries the
    flags name: read from a features folder, or extracted from images (through a temporary
    features folder, so unreadable images are found and reported as the extraction does)."""
    from reid_tf.retrieval.features_folder import FeaturesFolder
    started = time.time()
    if values.query_features_folder:
        folder = FeaturesFolder(values.query_features_folder)
        features, metadata = folder.load()
        return features, metadata, folder.model, time.time() - started, []
    if values.dataset_split:
        from reid_tf.data import dataset_protocol
        dataset_protocol(values.dataset_name)  # an unknown dataset is named before any work
    from reid_tf.retrieval.extraction import extract_to_folder
    table = _query_table(values)
    extractor = cli_extract.build_extractor(values, None)
    with tempfile.TemporaryDirectory(prefix="reid_tf_queries_") as folder:
        report = extract_to_folder(extractor, table, folder, chunk_size=values.query_chunk_size)
        if report.written_rows == 0:
            raise UsageError(f"none of the {len(table)} query images could be read (first: "
                             f"{report.unreadable[0][0]}: {report.unreadable[0][1]}).")
        features, metadata = FeaturesFolder(folder).load()
    model = {key: value for key, value in extractor.description.items() if key != "feature_dim"}
    return features, metadata, model, time.time() - started, report.unreadable


def results_table(query_metadata, index, distances, indices):
    """The top-k table (module docstring) of a search's ``(distances, indices)``."""
    count, k = indices.shape
    query_rows = np.repeat(np.arange(count), k)
    flat = indices.reshape(-1)
    found = flat >= 0
    gallery = index.metadata_of(flat[found])
    query = query_metadata.iloc[query_rows[found]].reset_index(drop=True)
    table = pd.DataFrame({
        "query_row": query_rows[found],
        "query_path": query["path"].to_numpy() if "path" in query else "",
        "rank": np.tile(np.arange(1, k + 1), count)[found],
        "gallery_row": flat[found],
        "gallery_path": gallery["path"].to_numpy() if "path" in gallery else "",
        "distance": distances.reshape(-1)[found]})
    for side, frame in (("query", query), ("gallery", gallery)):
        for column in REPORTED:
            if column in frame.columns and frame[column].notna().any():
                table[f"{side}_{column}"] = frame[column].to_numpy()
    return table


def _warn_other_model(sources, model):
    built_from = sources.get("model")
    if built_from and model and built_from != model:
        print(f"warning: the queries come from the model {model}, the index's gallery from "
              f"{built_from}: their features may not be comparable.", file=sys.stderr,
              flush=True)


def rank_list_path(values):
    if values.rank_list_file:
        return values.rank_list_file
    stem = values.results_csv[:-4] if values.results_csv.lower().endswith(".csv") \
        else values.results_csv
    return f"{stem}_rank_list.png"


def _identities(frame):
    if "identity" not in frame.columns:
        return None
    return pd.to_numeric(frame["identity"], errors="coerce").to_numpy(np.float64)


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}")
    _check(FLAGS)
    cli_index.quiet_faiss_loader()
    from reid_tf.retrieval.index import GalleryIndex
    index = GalleryIndex.load(FLAGS.index_folder)
    sources = cli_index.read_sources(FLAGS.index_folder)
    if FLAGS.search_nprobe:
        index.set_nprobe(FLAGS.search_nprobe)
    if FLAGS.query_features_folder:
        from reid_tf.retrieval.features_folder import FeaturesFolder
        dimension = FeaturesFolder(FLAGS.query_features_folder).dimension
        if dimension != index.dimension:  # (before reading the features)
            raise UsageError(f"--query_features_folder={FLAGS.query_features_folder} holds "
                             f"{dimension}-dimensional features, the index {FLAGS.index_folder} "
                             f"{index.dimension}-dimensional ones: not the same model.")
    features, metadata, model, extraction_seconds, unreadable = query_features(FLAGS)
    if features.shape[1] != index.dimension:
        raise UsageError(f"the query features have {features.shape[1]} dimensions, the index "
                         f"{FLAGS.index_folder} holds {index.dimension}: not the same model.")
    _warn_other_model(sources, model)
    started = time.time()
    distances, indices = index.search(features, FLAGS.top_k)
    search_seconds = time.time() - started
    table = results_table(metadata, index, distances, indices)
    path = os.path.expanduser(FLAGS.results_csv)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table.to_csv(path, index=False)
    lines = [f"Top-{indices.shape[1]} of {len(features)} queries against {len(index)} gallery "
             f"features ({index.backend}, distance {index.metric}) in {search_seconds:.2f} s"
             + (f" (query extraction {extraction_seconds:.1f} s)"
                if not FLAGS.query_features_folder else "")
             + f": {len(table)} rows in {path}."]
    if unreadable:
        lines.append(f"{len(unreadable)} query images could not be read and were left out:")
        lines.extend(f"  {image}: {reason}" for image, reason in unreadable)
    shown = min(FLAGS.visualize_queries, len(features))
    if shown:
        from reid_tf import visualization
        picture = visualization.draw_ranked_results(
            indices[:shown], metadata["path"].tolist()[:shown], index.metadata["path"].tolist(),
            os.path.expanduser(rank_list_path(FLAGS)), distances=distances[:shown],
            query_pids=None if _identities(metadata) is None else _identities(metadata)[:shown],
            gallery_pids=_identities(index.metadata))
        lines.append(f"Rank list of the first {shown} queries: {picture}.")
    print("\n".join(lines), flush=True)
    return 0


def run_main(argv=None):
    define_retrieve_flags()
    cli_app.run(main, argv=argv if argv is not None else sys.argv)
