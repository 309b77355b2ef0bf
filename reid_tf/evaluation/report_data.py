"""The data an evaluation report is built from, and its file ``report_data.npz``.

:func:`collect_report_data` turns the ``(summary, details)`` of
:func:`reid_tf.evaluation.evaluator.evaluate_features` into everything
:mod:`reid_tf.evaluation.report` shows, computed once and kept small whatever the gallery size:

* the per-query average precision (from the protocol's own metric,
  :func:`~reid_tf.evaluation.metrics.cmc_map` or
  :func:`~reid_tf.evaluation.metrics.sysu_mm01_cmc_map`, with ``return_per_query``) and, for the
  ``num_worst`` queries of lowest AP, their ``top_k`` gallery items (paths, identities, cameras,
  distances; the items the protocol removes from a query's list are left out);
* up to ``max_distance_samples`` positive (same identity) and negative (other identity)
  query-gallery distances, read from ``details["distmat"]`` without building any other
  query x gallery array (pairs the protocol removes are excluded);
* rank-1 and mAP per query camera x gallery camera (and per query modality x gallery modality
  for visible-infrared data), each from the protocol's metric on the sub-matrix of those rows
  and columns;
* the summary, the CMC curve and the run's flags.

:func:`save_report_data` / :func:`load_report_data` write and read it as ``report_data.npz``
(plain arrays and one JSON string; loaded without pickle).
"""
import dataclasses
import datetime
import json
import os

import numpy as np

from reid_tf.evaluation.chunked import FeatureDistances
from reid_tf.evaluation.metrics import cmc_map, sysu_mm01_cmc_map
from reid_tf.runtime.errors import UsageError

REPORT_DATA_FILE = "report_data.npz"
FORMAT_VERSION = 1
PAIR_KINDS = ("camera", "modality")
PAIR_FIELDS = ("q_values", "g_values", "rank1", "mAP", "num_valid", "num_query", "num_gallery")
WORST_FIELDS = ("query_index", "query_path", "query_pid", "query_cam", "ap", "rank",
                "num_matches", "length", "gallery_path", "gallery_pid", "gallery_cam",
                "distance", "correct")


class ReportDataError(UsageError):
    """A report data file that is missing or cannot be read."""


@dataclasses.dataclass
class ReportSettings:
    """How much of an evaluation the report keeps."""
    num_worst: int = 20
    top_k: int = 10
    max_distance_samples: int = 20000
    seed: int = 0


def _protocol(summary, details):
    """The protocol name of the summary (``DatasetEvaluator`` adds it) or, without it, the one
    ``details["remove_same_camera"]`` implies."""
    protocol = summary.get("protocol")
    if protocol:
        return str(protocol)
    return "standard" if details.get("remove_same_camera") else "no camera removal"


def removed_mask(protocol, remove_same_camera, q_pid, q_cam, g_pids, g_cams):
    """Which gallery items the protocol removes from the ranked list of queries with identities
    ``q_pid`` and cameras ``q_cam`` (scalars or column vectors broadcast against the gallery):
    same identity and camera (``remove_same_camera``), camera-2 items for camera-3 queries
    (``sysu_mm01``), nothing otherwise."""
    if protocol == "sysu_mm01":
        return (np.asarray(q_cam) == 3) & (np.asarray(g_cams) == 2)
    if remove_same_camera:
        return (np.asarray(q_pid) == np.asarray(g_pids)) & (np.asarray(q_cam) == np.asarray(g_cams))
    return np.zeros(np.broadcast_shapes(np.shape(q_pid), np.shape(g_pids)), dtype=bool)


def protocol_metric(protocol, remove_same_camera):
    """``metric(distmat, q_pids, g_pids, q_cams, g_cams)`` -> the project's metric result with
    ``per_query`` for ``protocol`` (CMC depth 20). ``distmat`` may also be a
    :class:`~reid_tf.evaluation.chunked.FeatureDistances` (ranked chunk by chunk)."""
    def metric(d, qp, gp, qc, gc):
        if isinstance(d, FeatureDistances):
            return d.metrics(qp, gp, qc, gc, max_rank=20,
                             remove_same_camera=bool(remove_same_camera), return_per_query=True,
                             rule="sysu_mm01" if protocol == "sysu_mm01" else "market")
        return matrix_metric(d, qp, gp, qc, gc)

    matrix_metric = _matrix_metric(protocol, remove_same_camera)
    return metric


def _matrix_metric(protocol, remove_same_camera):
    if protocol == "sysu_mm01":
        return lambda d, qp, gp, qc, gc: sysu_mm01_cmc_map(d, qp, gp, qc, gc, max_rank=20,
                                                           return_per_query=True)
    return lambda d, qp, gp, qc, gc: cmc_map(d, qp, gp, qc, gc, max_rank=20,
                                             remove_same_camera=bool(remove_same_camera),
                                             return_per_query=True)


def infer_modalities(protocol, cameras):
    """Modality names of the cameras of a visible-infrared protocol (SYSU-MM01: cameras 3 and 6
    are infrared; RegDB: camera 2 is), None for other protocols."""
    cameras = np.asarray(cameras)
    if protocol == "sysu_mm01":
        from reid_tf.data.sysu_mm01 import INFRARED_CAMERAS
        infrared = np.isin(cameras, INFRARED_CAMERAS)
    elif protocol == "regdb":
        from reid_tf.data.regdb import MODALITIES
        infrared = cameras == MODALITIES["infrared"][1]
    else:
        return None
    return np.where(infrared, "infrared", "visible")


def pair_metrics(distmat, q_pids, g_pids, q_cams, g_cams, q_groups, g_groups, protocol,
                 remove_same_camera):
    """Rank-1, mAP and the numbers of valid queries, queries and gallery items for every
    (query group, gallery group) pair, each from the protocol's metric on the sub-matrix of the
    group's rows and columns. Pairs with no valid query (e.g. same camera under the
    Market-1501 rule) get NaN metrics and ``num_valid`` 0."""
    q_values = np.unique(q_groups)
    g_values = np.unique(g_groups)
    shape = (len(q_values), len(g_values))
    table = {"q_values": q_values, "g_values": g_values, "rank1": np.full(shape, np.nan),
             "mAP": np.full(shape, np.nan), "num_valid": np.zeros(shape, np.int64),
             "num_query": np.zeros(shape, np.int64), "num_gallery": np.zeros(shape, np.int64)}
    metric = protocol_metric(protocol, remove_same_camera)
    for i, q_value in enumerate(q_values):
        rows = np.flatnonzero(q_groups == q_value)
        for j, g_value in enumerate(g_values):
            columns = np.flatnonzero(g_groups == g_value)
            table["num_query"][i, j], table["num_gallery"][i, j] = len(rows), len(columns)
            qp, qc = q_pids[rows, None], q_cams[rows, None]
            gp, gc = g_pids[columns], g_cams[columns]
            kept = (qp == gp) & ~removed_mask(protocol, remove_same_camera, qp, qc, gp, gc)
            if not kept.any():
                continue
            sub = (distmat.subset(rows, columns) if isinstance(distmat, FeatureDistances)
                   else distmat[np.ix_(rows, columns)])
            result = metric(sub, q_pids[rows], gp, q_cams[rows], gc)
            table["rank1"][i, j] = result["cmc"][0]
            table["mAP"][i, j] = result["mAP"]
            table["num_valid"][i, j] = result["num_valid_queries"]
    return table


def _positive_pairs(q_pids, g_pids):
    """Row and column indices of every same-identity query-gallery pair (O(positives))."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    low = np.searchsorted(sorted_pids, q_pids, side="left")
    counts = np.searchsorted(sorted_pids, q_pids, side="right") - low
    rows = np.repeat(np.arange(len(q_pids)), counts)
    starts = np.repeat(low - (np.cumsum(counts) - counts), counts)
    return rows, order[starts + np.arange(counts.sum())]


def distance_samples(distmat, q_pids, g_pids, q_cams, g_cams, protocol, remove_same_camera,
                     max_samples, rng):
    """Up to ``max_samples`` positive and negative distances (float32), the pairs the protocol
    removes excluded: every positive pair (or a uniform sample of them) and uniformly drawn
    query-gallery pairs of different identities."""
    rows, columns = _positive_pairs(q_pids, g_pids)
    keep = ~removed_mask(protocol, remove_same_camera, q_pids[rows], q_cams[rows],
                         g_pids[columns], g_cams[columns])
    rows, columns = rows[keep], columns[keep]
    if len(rows) > max_samples:
        chosen = np.sort(rng.choice(len(rows), size=max_samples, replace=False))
        rows, columns = rows[chosen], columns[chosen]
    positive = np.asarray(distmat[rows, columns], dtype=np.float32)
    num_query, num_gallery = distmat.shape
    draws = rng.integers(0, num_query * num_gallery, size=2 * max_samples)
    q, g = np.divmod(draws, num_gallery)
    keep = (q_pids[q] != g_pids[g]) & ~removed_mask(protocol, remove_same_camera, q_pids[q],
                                                    q_cams[q], g_pids[g], g_cams[g])
    q, g = q[keep][:max_samples], g[keep][:max_samples]
    negative = np.asarray(distmat[q, g], dtype=np.float32)
    return positive, negative


def worst_queries(distmat, q_pids, g_pids, q_cams, g_cams, q_paths, g_paths, per_query,
                  protocol, remove_same_camera, num_worst, top_k):
    """The ``num_worst`` valid queries of lowest AP (ties: lower query index first) with their
    ``top_k`` gallery items in ranked order (removed items left out; rows shorter than
    ``top_k`` are padded and ``length`` says how many entries are real)."""
    valid = np.flatnonzero(per_query["valid"])
    chosen = valid[np.argsort(per_query["ap"][valid], kind="stable")[:num_worst]]
    n = len(chosen)
    worst = {"query_index": chosen, "query_path": np.asarray([q_paths[q] for q in chosen], str),
             "query_pid": q_pids[chosen], "query_cam": q_cams[chosen],
             "ap": per_query["ap"][chosen], "rank": per_query["rank"][chosen],
             "num_matches": np.zeros(n, np.int64), "length": np.zeros(n, np.int64),
             "gallery_path": np.full((n, top_k), "", dtype=object),
             "gallery_pid": np.full((n, top_k), g_pids[0], dtype=g_pids.dtype),
             "gallery_cam": np.full((n, top_k), g_cams[0], dtype=g_cams.dtype),
             "distance": np.full((n, top_k), np.nan, np.float32),
             "correct": np.zeros((n, top_k), bool)}
    for row, q in enumerate(chosen):
        removed = removed_mask(protocol, remove_same_camera, q_pids[q], q_cams[q], g_pids, g_cams)
        worst["num_matches"][row] = int(np.sum((g_pids == q_pids[q]) & ~removed))
        distances = np.asarray(distmat[q])
        order = np.argsort(distances, kind="stable")
        order = order[~removed[order]][:top_k]
        length = len(order)
        worst["length"][row] = length
        worst["gallery_path"][row, :length] = [g_paths[g] for g in order]
        worst["gallery_pid"][row, :length] = g_pids[order]
        worst["gallery_cam"][row, :length] = g_cams[order]
        worst["distance"][row, :length] = distances[order]
        worst["correct"][row, :length] = g_pids[order] == q_pids[q]
    worst["gallery_path"] = worst["gallery_path"].astype(str)
    return worst


def _jsonable(value):
    """``value`` with numpy scalars and arrays turned into plain Python (for JSON)."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _modalities(details, side, protocol, cameras):
    given = details.get(f"{side}_modalities")
    return np.asarray(given, dtype=str) if given is not None else infer_modalities(protocol,
                                                                                   cameras)


def collect_report_data(summary, details, flags=None, tag=None, settings=None):
    """Everything the report shows, from ``evaluate_features``'s ``(summary, details)`` (see
    the module docstring). ``flags``: the run's flags (a name -> value mapping) or None.
    ``details`` may also hold ``q_modalities``/``g_modalities``; without them the modalities
    of SYSU-MM01 and RegDB follow from the cameras. Returns a dict of arrays and a ``meta``
    dict (JSON-ready)."""
    settings = settings or ReportSettings()
    distmat = details["distmat"]
    if not isinstance(distmat, FeatureDistances):
        distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(details["q_pids"]), np.asarray(details["g_pids"])
    q_cams, g_cams = np.asarray(details["q_cams"]), np.asarray(details["g_cams"])
    if distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"details: distmat has shape {distmat.shape} but there are "
                         f"{len(q_pids)} queries and {len(g_pids)} gallery items.")
    protocol = _protocol(summary, details)
    remove_same_camera = bool(details.get("remove_same_camera", False))
    result = protocol_metric(protocol, remove_same_camera)(distmat, q_pids, g_pids, q_cams,
                                                           g_cams)
    rng = np.random.default_rng(settings.seed)
    positive, negative = distance_samples(distmat, q_pids, g_pids, q_cams, g_cams, protocol,
                                          remove_same_camera, settings.max_distance_samples, rng)
    data = {"cmc": np.asarray(details["cmc"], np.float64),
            "positive_distances": positive, "negative_distances": negative}
    worst = worst_queries(distmat, q_pids, g_pids, q_cams, g_cams, details["q_paths"],
                          details["g_paths"], result["per_query"], protocol, remove_same_camera,
                          settings.num_worst, settings.top_k)
    data.update({f"worst_{key}": value for key, value in worst.items()})
    pairs = {"camera": (q_cams, g_cams)}
    q_modalities = _modalities(details, "q", protocol, q_cams)
    g_modalities = _modalities(details, "g", protocol, g_cams)
    if q_modalities is not None and g_modalities is not None:
        pairs["modality"] = (q_modalities, g_modalities)
    for kind, (q_groups, g_groups) in pairs.items():
        table = pair_metrics(distmat, q_pids, g_pids, q_cams, g_cams, q_groups, g_groups,
                             protocol, remove_same_camera)
        data.update({f"{kind}_{key}": value for key, value in table.items()})
    data["meta"] = {
        "format_version": FORMAT_VERSION, "summary": _jsonable(summary),
        "flags": _jsonable(dict(flags)) if flags is not None else None, "tag": tag,
        "protocol": protocol, "remove_same_camera": remove_same_camera,
        "settings": dataclasses.asdict(settings), "num_query": int(len(q_pids)),
        "num_gallery": int(len(g_pids)),
        "num_valid_queries": int(result["num_valid_queries"]),
        "mAP_of_details": float(result["mAP"]),
        "distances": details.get("distances_note", "full query x gallery matrix"),
        "created": datetime.datetime.now().isoformat(timespec="seconds")}
    return data


def save_report_data(folder, data):
    """Write ``data`` (from :func:`collect_report_data`) to ``folder/report_data.npz``."""
    os.makedirs(folder, exist_ok=True)
    arrays = {key: np.asarray(value) for key, value in data.items() if key != "meta"}
    arrays["meta_json"] = np.asarray(json.dumps(data["meta"]))
    path = os.path.join(folder, REPORT_DATA_FILE)
    np.savez_compressed(path, **arrays)
    return path


def load_report_data(folder):
    """Read ``folder/report_data.npz`` back into the dict :func:`collect_report_data` made.
    Raises :class:`ReportDataError` (naming the file) when it is missing or unreadable."""
    path = os.path.join(folder, REPORT_DATA_FILE)
    if not os.path.isfile(path):
        raise ReportDataError(f"{path} not found: the report is rebuilt from the data an "
                              "evaluation saves with --save_data_to_disk; run the evaluation "
                              "with --save_data_to_disk.")
    try:
        with np.load(path, allow_pickle=False) as stored:
            data = {key: stored[key] for key in stored.files}
        data["meta"] = json.loads(str(data.pop("meta_json")))
    except (OSError, ValueError, KeyError) as error:
        raise ReportDataError(f"{path} cannot be read as report data ({error}); run the "
                              "evaluation again with --save_data_to_disk.") from None
    if data["meta"].get("format_version") != FORMAT_VERSION:
        raise ReportDataError(f"{path} has report data format "
                              f"{data['meta'].get('format_version')!r}, expected "
                              f"{FORMAT_VERSION}; run the evaluation again with "
                              "--save_data_to_disk.")
    return data
