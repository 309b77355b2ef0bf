"""``python -m reid_tf.index``: features folders -> a saved gallery index.

    python -m reid_tf.index --features_folders=runs/gallery_features --index_folder=runs/index
    python -m reid_tf.index --features_folders=F1,F2 --index_folder=I \\
        --index_backend=faiss_ivf --nlist=1024 --nprobe=16
    python -m reid_tf.index ... --index_backend=faiss_ivfpq --pq_m=32 --pq_nbits=8

The features folders (written by ``python -m reid_tf.extract``; ``--features_folders``
comma-separated, in the order given) must agree on dimension, distance and normalisation; an
unfinished extraction is refused (run the extraction again to finish it). The index
(:class:`reid_tf.retrieval.index.GalleryIndex`) keeps every feature's metadata (path,
identity, camera, modality, split, features folder) and is saved into ``--index_folder``,
which must not exist or be empty unless ``--overwrite`` replaces the index saved there.
``--distance_metric`` defaults to the distance the features were extracted for (their run's
evaluation distance, recorded in the features folder). ``sources.json`` beside the index names
the features folders and their model, so that ``python -m reid_tf.retrieve`` can tell when its
queries come from another model.
"""
import json
import logging
import os
import sys
import time

from absl import flags

from reid_tf.cli import app as cli_app
from reid_tf.cli.validation import flag_given
from reid_tf.runtime.errors import UsageError

FLAGS = flags.FLAGS
BACKENDS = ("auto", "builtin", "faiss_flat", "faiss_ivf", "faiss_ivfpq")
METRICS = ("cosine", "euclidean", "sqeuclidean", "neg_dot")
SOURCES_FILE = "sources.json"
# What GalleryIndex.save writes (and what --overwrite removes before saving again).
INDEX_FILES = ("index.json", "vectors.npy", "index.faiss", "metadata.csv", SOURCES_FILE)


def define_index_folder_flag():
    """``--index_folder`` (written by the index command, read by the retrieval)."""
    if "index_folder" not in FLAGS:
        flags.DEFINE_string("index_folder", "", "The gallery index folder.")


def define_index_flags():
    """The index command's flags."""
    define_index_folder_flag()
    if "index_backend" in FLAGS:
        return
    flags.DEFINE_list("features_folders", [], "The gallery's features folder(s) "
                      "(python -m reid_tf.extract), comma-separated.")
    flags.DEFINE_enum("index_backend", "auto", list(BACKENDS),
                      "auto (faiss_flat when faiss imports, else builtin), builtin (exact, "
                      "numpy), faiss_flat (exact), faiss_ivf or faiss_ivfpq (approximate).")
    if "distance_metric" not in FLAGS:
        # Defined as solution.py's flag is (same type and default), which comes first where
        # both are defined: only whether it is given matters here.
        flags.DEFINE_string("distance_metric", "cosine",
                            f"The distance of the index: {', '.join(METRICS)}; not given: "
                            "the one recorded in the features folders (their run's "
                            "evaluation distance).")
    flags.DEFINE_integer("nlist", 0, "IVF cells (faiss_ivf, faiss_ivfpq); 0: 4*sqrt(N), at "
                         "least 39 training vectors per cell.", lower_bound=0)
    flags.DEFINE_integer("nprobe", 8, "IVF cells searched (faiss_ivf, faiss_ivfpq); "
                         "python -m reid_tf.retrieve --search_nprobe changes it.", lower_bound=1)
    flags.DEFINE_integer("pq_m", 0, "PQ sub-quantisers (faiss_ivfpq; a divisor of the feature "
                         "dimension); 0: the largest divisor up to dimension/8.", lower_bound=0)
    flags.DEFINE_integer("pq_nbits", 8, "Bits per PQ code (faiss_ivfpq).", lower_bound=1,
                         upper_bound=16)
    flags.DEFINE_bool("index_use_gpu", False, "Build the faiss index on every GPU "
                      "(faiss-gpu); it is saved for the CPU.")
    flags.DEFINE_bool("overwrite", False, "Replace the index saved in --index_folder.")


def _check(values):
    if not values.features_folders:
        raise UsageError("--features_folders: give the gallery's features folder(s) "
                         "(python -m reid_tf.extract --features_folder=...).")
    for folder in values.features_folders:
        if not os.path.isdir(os.path.expanduser(folder)):
            raise FileNotFoundError(f"--features_folders: no such folder {folder}.")
    if not values.index_folder:
        raise UsageError("--index_folder: where to save the index is required.")
    if flag_given(values, "distance_metric") and values.distance_metric not in METRICS:
        raise UsageError(f"--distance_metric={values.distance_metric!r}: expected one of "
                         f"{', '.join(METRICS)}.")
    ivf = values.index_backend in ("faiss_ivf", "faiss_ivfpq")
    for name, applies in (("nlist", ivf), ("nprobe", ivf),
                          ("pq_m", values.index_backend == "faiss_ivfpq"),
                          ("pq_nbits", values.index_backend == "faiss_ivfpq")):
        if flag_given(values, name) and not applies:
            raise UsageError(f"--{name}={getattr(values, name)} does not apply to "
                             f"--index_backend={values.index_backend}; drop it.")
    _check_output(os.path.expanduser(values.index_folder), values.overwrite)


def _check_output(folder, overwrite):
    """The output folder is new or empty, or (with ``overwrite``) holds an index."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--index_folder={folder} is a file, not a folder.")
    if not os.path.isdir(folder) or not os.listdir(folder):
        return
    if not overwrite:
        raise UsageError(f"--index_folder={folder} is not empty; give --overwrite to replace "
                         "the index saved there, or another folder.")
    if not os.path.isfile(os.path.join(folder, "index.json")):
        raise UsageError(f"--index_folder={folder} holds files but no index.json: not a "
                         "gallery index, --overwrite does not delete it; give another folder.")


def _clear(folder):
    for name in INDEX_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)


def read_sources(folder):
    """The ``sources.json`` of an index folder (``{}`` when it has none)."""
    path = os.path.join(os.path.expanduser(folder), SOURCES_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as stream:
            return json.load(stream)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot be read ({error}).") from None


def quiet_faiss_loader():
    """faiss's loader logs at INFO which CPU build it found (absl shows INFO): keep warnings."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def build_index(values):
    """The :class:`~reid_tf.retrieval.index.GalleryIndex` of the flags, built from their
    features folders, and the sources (features folders, model) it was built from."""
    from reid_tf.retrieval.features_folder import load_features
    from reid_tf.retrieval.index import GalleryIndex
    features, metadata, folders = load_features(values.features_folders)
    if len(features) == 0:
        raise UsageError(f"--features_folders: {', '.join(values.features_folders)} hold no "
                         "features (every image was unreadable?).")
    metric = values.distance_metric if flag_given(values, "distance_metric") \
        else folders[0].metric
    index = GalleryIndex(values.index_backend, metric, nlist=values.nlist,
                         nprobe=values.nprobe, m=values.pq_m, nbits=values.pq_nbits,
                         use_gpu=values.index_use_gpu)
    index.build(features, metadata)
    sources = {"features_folders": [os.path.abspath(folder.folder) for folder in folders],
               "rows": [len(folder) for folder in folders],
               "model": folders[0].model, "normalized": folders[0].normalized,
               "features_metric": folders[0].metric}
    return index, sources


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}")
    _check(FLAGS)
    quiet_faiss_loader()
    import reid_tf.retrieval  # noqa: F401  (TensorFlow loads here, before the clock starts)
    started = time.time()
    index, sources = build_index(FLAGS)
    folder = os.path.expanduser(FLAGS.index_folder)
    _check_output(folder, FLAGS.overwrite)  # (nothing appeared there meanwhile)
    _clear(folder)
    index.save(folder)
    with open(os.path.join(folder, SOURCES_FILE), "w") as stream:
        json.dump(sources, stream, indent=2, sort_keys=True)
    parameters = ", ".join(f"{key}={value}" for key, value in sorted(index.parameters.items()))
    print(f"Gallery index of {len(index)} features ({index.dimension} dimensions, "
          f"{len(sources['features_folders'])} features folder(s)) saved to {folder}: backend "
          f"{index.backend} ({index.backend_reason}){', ' + parameters if parameters else ''}, "
          f"distance {index.metric}, in {time.time() - started:.1f} s.", flush=True)
    return 0


def run_main(argv=None):
    define_index_flags()
    cli_app.run(main, argv=argv if argv is not None else sys.argv)
