"""``report.html``: one self-contained page a person reads after an evaluation.

:func:`write_report` takes the ``(summary, details)`` of
:func:`reid_tf.evaluation.evaluator.evaluate_features` (plus the run's flags) and writes
``report.html`` into the evaluation's folder: the metrics table (mean ± sample standard
deviation where the protocol has trials, both directions for RegDB), the CMC curve, the
histograms of positive and negative distances, rank-1 and mAP per query camera x gallery camera
(and per modality pair for visible-infrared data), the queries of lowest AP with their top-10
gallery images (green: same identity, red: another) and the flags. Pictures are PNG data URIs
(matplotlib figures, thumbnails read from the image files), the CSS is inline, and the page
loads nothing else. With ``save_data=True`` the report data is also kept as
``report_data.npz`` (:mod:`reid_tf.evaluation.report_data`), from which
:func:`render_report` (``python -m reid_tf.report RUN_FOLDER``) rebuilds the page.
"""
import base64
import math
import os

import numpy as np

from reid_tf.evaluation.report_data import (ReportSettings, collect_report_data,
                                            save_report_data)

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
METRIC_LABELS = {"rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10", "rank20": "Rank-20",
                 "mAP": "mAP", "mINP": "mINP"}
THUMBNAIL_SIZE = (128, 64)  # height, width: larger images are shrunk to it, smaller kept
THUMBNAIL_COLOURS = 256  # palette PNG
FIGURE_SIZE = (5.7, 3.8)  # inches at 100 dpi: 570 x 380 pixels, two side by side
PROTOCOL_NOTES = {
    "standard": "Market-1501 rules: gallery images of the query's identity taken by the "
                "query's camera are left out of its ranked list.",
    "vehicleid": "VehicleID: no camera rule; the metrics are averaged over random "
                 "query/gallery trials (the pictures show one of them).",
    "sysu_mm01": "SYSU-MM01 (CM-NAS): camera-3 queries never see camera-2 gallery images; "
                 "CMC over distinct identities; the metrics are averaged over gallery draws "
                 "(the pictures show the first).",
    "regdb": "RegDB (CM-NAS): no camera rule; both search directions are evaluated.",
}


def data_uri(png):
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _percent(value):
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _metric_cells(entry, trials=None, entry_name="main"):
    """Table cells (text, exact value, key) of one summary entry; with trials the text is
    ``mean ± std`` (sample standard deviation over the trials)."""
    cells = []
    for key in METRIC_KEYS:
        value = entry.get(key)
        if value is None:
            cells.append({"key": key, "entry": entry_name, "value": "", "text": "—"})
            continue
        text = _percent(value)
        values = [trial[key] for trial in trials or [] if key in trial]
        if len(values) >= 2:
            text += f" ± {100 * float(np.std(values, ddof=1)):.2f}"
        cells.append({"key": key, "entry": entry_name, "value": repr(float(value)),
                      "text": text})
    return cells


def _entry_label(name):
    if name == "reverse_direction":
        return "Reverse direction (gallery images as queries)"
    return f"{name.replace('_', '-')} features"


def metric_rows(summary, tag=None):
    """The rows of the metrics table: the main entry, each secondary entry of the summary
    (RegDB's reverse direction, CM-NAS's pre-BNNeck features), RegDB's mean over both
    directions, and one row per trial."""
    trials = summary.get("trials") or []
    main = "Mean ± std over {} trials".format(len(trials)) if len(trials) >= 2 else \
        "This evaluation" + (f" ({tag})" if tag else "")
    rows = [{"label": main, "cells": _metric_cells(summary, trials), "kind": "main"}]
    for name, entry in summary.items():
        if isinstance(entry, dict) and "rank1" in entry:
            rows.append({"label": _entry_label(name), "kind": "secondary",
                         "cells": _metric_cells(entry, entry.get("trials"), name)})
    reverse = summary.get("reverse_direction")
    if isinstance(reverse, dict) and "rank1" in reverse:
        both = [summary, reverse]
        mean = {key: float(np.mean([entry[key] for entry in both])) for key in METRIC_KEYS
                if all(key in entry for entry in both)}
        rows.append({"label": "Both directions: mean ± std", "kind": "secondary",
                     "cells": _metric_cells(mean, both, "both_directions")})
    for number, trial in enumerate(trials if len(trials) >= 2 else []):
        rows.append({"label": f"Trial {number}", "kind": "trial",
                     "cells": _metric_cells(trial, None, f"trial{number}")})
    return rows


def _heat(value):
    """An inline background colour for a fraction (white at 0 to green at 1)."""
    if not math.isfinite(value):
        return "#f1f1f1"
    value = min(max(value, 0.0), 1.0)
    red, green, blue = (int(255 - (255 - c) * value) for c in (46, 160, 90))
    return f"rgb({red},{green},{blue})"


def pair_tables(data, kind):
    """The per-pair tables (rank-1 and mAP) of ``kind`` (``camera`` or ``modality``), or None
    when the report data has none."""
    if f"{kind}_q_values" not in data:
        return None
    q_values, g_values = data[f"{kind}_q_values"], data[f"{kind}_g_values"]
    tables = []
    for metric in ("rank1", "mAP"):
        rows = []
        for i, q_value in enumerate(q_values):
            cells = []
            for j, g_value in enumerate(g_values):
                value = float(data[f"{kind}_{metric}"][i, j])
                valid = int(data[f"{kind}_num_valid"][i, j])
                cells.append({
                    "q": str(q_value), "g": str(g_value), "text": _percent(value),
                    "value": repr(value) if math.isfinite(value) else "",
                    "background": _heat(value), "num_valid": valid,
                    "title": (f"{valid} valid of {int(data[f'{kind}_num_query'][i, j])} queries, "
                              f"{int(data[f'{kind}_num_gallery'][i, j])} gallery images")
                    if valid else "no query has a true match here (after the protocol's rules)"})
            rows.append({"q": str(q_value), "cells": cells})
        tables.append({"metric": metric, "label": METRIC_LABELS[metric],
                       "g_values": [str(value) for value in g_values], "rows": rows})
    return tables


class _Thumbnails:
    """Data URIs of image files as report thumbnails (each file read once)."""

    def __init__(self, size=THUMBNAIL_SIZE):
        self.size = size
        self.cache = {}
        self.missing = []

    def __call__(self, path):
        if path not in self.cache:
            from reid_tf import visualization
            image = visualization.load_thumbnail(path, *self.size, upscale=False)
            if image is None:
                self.missing.append(path)
                image = np.full(self.size + (3,), 200, np.uint8)
            self.cache[path] = data_uri(visualization.png_bytes(image, THUMBNAIL_COLOURS))
        return self.cache[path]


def worst_rows(data, thumbnails):
    """The worst-query rows: the query and its ranked gallery items with their data URIs."""
    rows = []
    for row in range(len(data["worst_query_index"])):
        gallery = []
        for column in range(int(data["worst_length"][row])):
            path = str(data["worst_gallery_path"][row, column])
            gallery.append({
                "rank": column + 1, "src": thumbnails(path), "path": path,
                "pid": str(data["worst_gallery_pid"][row, column]),
                "cam": str(data["worst_gallery_cam"][row, column]),
                "distance": f"{float(data['worst_distance'][row, column]):.4g}",
                "correct": bool(data["worst_correct"][row, column])})
        path = str(data["worst_query_path"][row])
        rows.append({"number": row + 1, "index": int(data["worst_query_index"][row]),
                     "src": thumbnails(path), "path": path,
                     "pid": str(data["worst_query_pid"][row]),
                     "cam": str(data["worst_query_cam"][row]),
                     "ap": _percent(float(data["worst_ap"][row])),
                     "rank": int(data["worst_rank"][row]),
                     "num_matches": int(data["worst_num_matches"][row]), "gallery": gallery})
    return rows


def figures(data, tag=None):
    """Data URIs of the CMC curve and the distance histograms."""
    from reid_tf import visualization
    title = f"CMC ({tag})" if tag else "CMC"
    cmc = visualization.figure_png_bytes(visualization.cmc_figure(data["cmc"], title=title,
                                                                  figsize=FIGURE_SIZE))
    histogram = visualization.figure_png_bytes(visualization.distance_histogram_figure(
        data["positive_distances"], data["negative_distances"],
        title="Query-gallery distances", figsize=FIGURE_SIZE))
    return {"cmc": data_uri(cmc), "distances": data_uri(histogram)}


def flag_rows(flags, columns=2):
    """Rows of the flags table: ``columns`` ``(name, value)`` pairs a row, sorted by name down
    each column (None: no flags recorded)."""
    if flags is None:
        return None
    pairs = [(name, "" if flags[name] is None else str(flags[name])) for name in sorted(flags)]
    height = -(-len(pairs) // columns)
    return [[pairs[row + column * height] for column in range(columns)
             if row + column * height < len(pairs)] for row in range(height)]


def _environment():
    import jinja2
    folder = os.path.dirname(os.path.abspath(__file__))  # the template is package data
    return jinja2.Environment(loader=jinja2.FileSystemLoader(folder),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)


def render_html(data):
    """The report page (a string) of report data (:func:`collect_report_data`'s dict)."""
    import reid_tf
    meta = data["meta"]
    summary = meta["summary"]
    thumbnails = _Thumbnails()
    worst = worst_rows(data, thumbnails)
    context = {
        "meta": meta, "summary": summary, "tag": meta.get("tag"),
        "dataset": summary.get("dataset_name") or "dataset not recorded",
        "protocol": meta["protocol"], "protocol_note": PROTOCOL_NOTES.get(meta["protocol"], ""),
        "metric_labels": [METRIC_LABELS[key] for key in METRIC_KEYS],
        "metric_rows": metric_rows(summary, meta.get("tag")),
        "figures": figures(data, meta.get("tag")),
        "num_positive": int(len(data["positive_distances"])),
        "num_negative": int(len(data["negative_distances"])),
        "camera_tables": pair_tables(data, "camera"),
        "modality_tables": pair_tables(data, "modality"),
        "worst": worst, "missing_images": thumbnails.missing,
        "flags": flag_rows(meta.get("flags")),
        "num_flags": len(meta.get("flags") or {}), "version": reid_tf.__version__}
    return _environment().get_template(TEMPLATE).render(**context)


def render_report(data, output_path):
    """Write the report page of ``data`` to ``output_path``; returns the path."""
    page = render_html(data)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return output_path


def write_report(folder, summary, details, flags=None, tag=None, save_data=False,
                 settings=None):
    """Write ``folder/report.html`` of an evaluation (``evaluate_features``'s
    ``(summary, details)``; ``flags``: the run's flags as a mapping, or None) and, with
    ``save_data``, ``folder/report_data.npz`` to rebuild it from. Returns the page's path."""
    data = collect_report_data(summary, details, flags=flags, tag=tag,
                               settings=settings or ReportSettings())
    if save_data:
        save_report_data(folder, data)
    return render_report(data, os.path.join(folder, REPORT_FILE))
