"""report.html: the numbers it shows against evaluation.json and independent numpy metrics,
its worst-query lists, its self-containment, the saved report data and the command line."""
import base64
import html.parser
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from reid_tf.evaluation.metrics import cmc_map, sysu_mm01_cmc_map
from reid_tf.evaluation.report import write_report
from reid_tf.evaluation.report_data import (REPORT_DATA_FILE, ReportDataError, ReportSettings,
                                            load_report_data)
from report_helpers import standard_evaluation, sysu_evaluation

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Page(html.parser.HTMLParser):
    """Cells (attributes + text) of the metric and pair tables, images, scripts and links."""

    def __init__(self):
        super().__init__()
        self.cells, self.images, self.tags, self.tiles = [], [], [], []
        self._cell = None
        self._table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs
        elif tag == "td" and "data-value" in attrs:
            self._cell = dict(attrs, table=self._table, text="")
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "div" and "tile" in attrs.get("class", ""):
            self.tiles.append(attrs["class"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None


def _parse(path):
    page = _Page()
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    page.feed(text)
    return page, text


def _metric_cells(page, entry):
    return {cell["data-key"]: cell for cell in page.cells if cell.get("data-entry") == entry}


def _pair_cells(page, kind, metric):
    return {(cell["data-q"], cell["data-g"]): cell for cell in page.cells
            if cell["table"] and cell["table"].get("data-kind") == kind
            and cell["table"].get("data-metric") == metric}


def _numpy_rank1_ap(distmat, q_pids, g_pids, q_cams, g_cams, remove_same_camera):
    """Per-query first-match rank and AP, written out with a plain loop (None: no match)."""
    ranks, aps = [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q].astype(np.float32), kind="stable")
        if remove_same_camera:
            order = order[~((g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q]))]
        hits = np.flatnonzero(g_pids[order] == q_pids[q]) + 1
        if len(hits) == 0:
            ranks.append(None)
            aps.append(None)
            continue
        ranks.append(int(hits[0]))
        aps.append(float(np.mean(np.arange(1, len(hits) + 1) / hits)))
    return ranks, aps


@pytest.fixture(scope="module")
def standard_run(tmp_path_factory):
    from reid_tf.evaluation.evaluator import write_evaluation_outputs
    folder = str(tmp_path_factory.mktemp("standard"))
    summary, details = standard_evaluation(os.path.join(folder, "images"))
    write_evaluation_outputs(summary, details, folder, tag="trained", draw=False)
    flags = {"dataset_name": "TinyMarket", "epoch_num": 3, "distance_metric": "cosine"}
    write_report(folder, summary, details, flags=flags, tag="trained", save_data=True)
    return folder, summary, details


@pytest.fixture(scope="module")
def sysu_run(tmp_path_factory):
    from reid_tf.evaluation.evaluator import write_evaluation_outputs
    folder = str(tmp_path_factory.mktemp("sysu"))
    summary, details = sysu_evaluation(os.path.join(folder, "images"))
    write_evaluation_outputs(summary, details, folder, tag="evaluation", draw=False)
    write_report(folder, summary, details, tag="evaluation")
    return folder, summary, details


def test_cmc_map_per_query_matches_a_numpy_loop():
    rng = np.random.default_rng(3)
    distmat = rng.random((9, 25))
    distmat[2, 3] = distmat[2, 4]  # a tie: broken by gallery index
    q_pids, g_pids = rng.integers(0, 4, 9), rng.integers(0, 5, 25)
    q_cams, g_cams = rng.integers(0, 2, 9), rng.integers(0, 2, 25)
    result = cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, return_per_query=True)
    ranks, aps = _numpy_rank1_ap(distmat, q_pids, g_pids, q_cams, g_cams, True)
    per_query = result["per_query"]
    assert per_query["valid"].tolist() == [rank is not None for rank in ranks]
    assert per_query["rank"].tolist() == [rank or 0 for rank in ranks]
    np.testing.assert_allclose(per_query["ap"][per_query["valid"]],
                               [ap for ap in aps if ap is not None], rtol=1e-12)
    assert result["mAP"] == pytest.approx(np.mean(per_query["ap"][per_query["valid"]]))
    sysu = sysu_mm01_cmc_map(distmat, q_pids, g_pids, q_cams + 2, g_cams + 2,
                             return_per_query=True)
    valid = sysu["per_query"]["valid"]
    assert sysu["mAP"] == pytest.approx(np.mean(sysu["per_query"]["ap"][valid]))
    assert "per_query" not in cmc_map(distmat, q_pids, g_pids, q_cams, g_cams)


def test_metrics_table_shows_evaluation_json(standard_run):
    folder, _, _ = standard_run
    with open(os.path.join(folder, "evaluation.json")) as handle:
        record = json.load(handle)
    page, _ = _parse(os.path.join(folder, "report.html"))
    cells = _metric_cells(page, "main")
    assert sorted(cells) == sorted(["rank1", "rank5", "rank10", "rank20", "mAP", "mINP"])
    for key, cell in cells.items():
        assert float(cell["data-value"]) == record[key]
        assert cell["text"] == f"{100 * record[key]:.2f}"


def test_camera_pair_tables_equal_metrics_of_the_sub_matrices(standard_run):
    folder, _, details = standard_run
    page, _ = _parse(os.path.join(folder, "report.html"))
    distmat = details["distmat"]
    q_pids, g_pids = details["q_pids"], details["g_pids"]
    q_cams, g_cams = details["q_cams"], details["g_cams"]
    rank1_cells = _pair_cells(page, "camera", "rank1")
    map_cells = _pair_cells(page, "camera", "mAP")
    assert sorted(rank1_cells) == [(str(q), str(g)) for q in (1, 2, 3) for g in (1, 2, 3, 4)]
    for q_cam in (1, 2, 3):
        rows = np.flatnonzero(q_cams == q_cam)
        for g_cam in (1, 2, 3, 4):
            columns = np.flatnonzero(g_cams == g_cam)
            sub = distmat[rows][:, columns]
            ranks, aps = _numpy_rank1_ap(sub, q_pids[rows], g_pids[columns], q_cams[rows],
                                         g_cams[columns], True)
            valid = [i for i, rank in enumerate(ranks) if rank is not None]
            rank1, ap = rank1_cells[str(q_cam), str(g_cam)], map_cells[str(q_cam), str(g_cam)]
            if q_cam == g_cam:  # every true match is removed by the same-camera rule
                assert not valid and rank1["text"] == "—" and ap["data-num-valid"] == "0"
                continue
            expected_rank1 = np.mean([ranks[i] == 1 for i in valid])
            expected_map = np.mean([aps[i] for i in valid])
            library = cmc_map(sub, q_pids[rows], g_pids[columns], q_cams[rows],
                              g_cams[columns])
            assert float(rank1["data-value"]) == pytest.approx(expected_rank1, abs=1e-12)
            assert float(rank1["data-value"]) == pytest.approx(library["cmc"][0], abs=1e-12)
            assert float(ap["data-value"]) == pytest.approx(expected_map, abs=1e-12)
            assert float(ap["data-value"]) == pytest.approx(library["mAP"], abs=1e-12)
            assert rank1["text"] == f"{100 * expected_rank1:.2f}"
            assert int(rank1["data-num-valid"]) == len(valid)


def test_worst_queries_are_the_lowest_ap_with_their_ranked_gallery(standard_run):
    folder, _, details = standard_run
    distmat, q_pids, g_pids = details["distmat"], details["q_pids"], details["g_pids"]
    q_cams, g_cams = details["q_cams"], details["g_cams"]
    _, aps = _numpy_rank1_ap(distmat, q_pids, g_pids, q_cams, g_cams, True)
    valid = [q for q, ap in enumerate(aps) if ap is not None]
    expected = sorted(valid, key=lambda q: (aps[q], q))[:20]
    data = load_report_data(folder)
    assert data["worst_query_index"].tolist() == expected
    page, _ = _parse(os.path.join(folder, "report.html"))
    rows = [attrs for tag, attrs in page.tags if tag == "div" and "data-query" in attrs]
    assert [int(attrs["data-query"]) for attrs in rows] == expected
    assert len(page.tiles) == 20 * 11
    tiles = iter(page.tiles)
    for q in expected:
        order = np.argsort(distmat[q].astype(np.float32), kind="stable")
        order = order[~((g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q]))][:10]
        assert next(tiles) == "tile query"
        assert [next(tiles) for _ in order] == [
            "tile correct" if g_pids[g] == q_pids[q] else "tile wrong" for g in order]
        assert data["worst_gallery_path"][expected.index(q)].tolist() == [
            details["g_paths"][g] for g in order]


def test_distance_samples_exclude_same_camera_positives(standard_run, tmp_path):
    _, summary, details = standard_run
    from reid_tf.evaluation.report_data import collect_report_data
    distmat, q_pids, g_pids = details["distmat"], details["q_pids"], details["g_pids"]
    same = q_pids[:, None] == g_pids[None, :]
    same_camera = details["q_cams"][:, None] == details["g_cams"][None, :]
    data = collect_report_data(summary, details, settings=ReportSettings(
        max_distance_samples=300))
    np.testing.assert_array_equal(np.sort(data["positive_distances"]),
                                  np.sort(distmat[same & ~same_camera].astype(np.float32)))
    negative = np.sort(distmat[~same].astype(np.float32))
    assert len(data["negative_distances"]) == 300
    assert np.all(np.isin(data["negative_distances"], negative))
    small = collect_report_data(summary, details, settings=ReportSettings(
        max_distance_samples=50))
    assert len(small["positive_distances"]) == 50 and len(small["negative_distances"]) == 50


def test_page_is_self_contained(standard_run):
    folder, _, _ = standard_run
    page, text = _parse(os.path.join(folder, "report.html"))
    from PIL import Image
    assert len(page.images) == 2 + 20 * 11
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        decoded = Image.open(io.BytesIO(base64.b64decode(image["src"][len(prefix):])))
        assert decoded.format == "PNG" and decoded.size[0] > 0
    names = [tag for tag, _ in page.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    assert "http://" not in text and "https://" not in text and "url(" not in text


def test_flags_table_lists_the_flags(standard_run):
    folder, _, _ = standard_run
    _, text = _parse(os.path.join(folder, "report.html"))
    flags_table = text[text.index('<table class="flags">'):]
    pairs = re.findall(r'<td class="name">--(\w+)</td><td class="value">([^<]*)</td>',
                       flags_table)
    assert sorted(pairs) == [("dataset_name", "TinyMarket"), ("distance_metric", "cosine"),
                             ("epoch_num", "3")]


def test_sysu_report_shows_mean_and_std_over_trials_and_modality_pairs(sysu_run):
    folder, summary, details = sysu_run
    with open(os.path.join(folder, "evaluation.json")) as handle:
        record = json.load(handle)
    page, text = _parse(os.path.join(folder, "report.html"))
    assert "Mean ± std over 3 trials" in text
    for key, cell in _metric_cells(page, "main").items():
        values = [trial[key] for trial in record["trials"]]
        assert float(cell["data-value"]) == record[key]
        assert cell["text"] == f"{100 * record[key]:.2f} ± {100 * np.std(values, ddof=1):.2f}"
    for number, trial in enumerate(record["trials"]):
        for key, cell in _metric_cells(page, f"trial{number}").items():
            assert cell["text"] == f"{100 * trial[key]:.2f}"
    modality = _pair_cells(page, "modality", "mAP")
    assert sorted(modality) == [("infrared", "visible")]
    whole = sysu_mm01_cmc_map(details["distmat"], details["q_pids"], details["g_pids"],
                              details["q_cams"], details["g_cams"])
    assert float(modality["infrared", "visible"]["data-value"]) == pytest.approx(whole["mAP"])
    cameras = _pair_cells(page, "camera", "rank1")
    assert cameras["3", "2"]["text"] == "—"  # camera-3 queries never see camera 2
    rows = np.flatnonzero(details["q_cams"] == 6)
    columns = np.flatnonzero(details["g_cams"] == 2)
    expected = sysu_mm01_cmc_map(details["distmat"][rows][:, columns], details["q_pids"][rows],
                                 details["g_pids"][columns], details["q_cams"][rows],
                                 details["g_cams"][columns])
    assert float(cameras["6", "2"]["data-value"]) == pytest.approx(expected["cmc"][0])
    assert "No flags were recorded" in text


def test_regdb_rows_show_both_directions():
    from reid_tf.evaluation.report import metric_rows
    forward = {"rank1": 0.5, "rank5": 0.75, "rank10": 0.8, "rank20": 0.9, "mAP": 0.4,
               "mINP": 0.2}
    reverse = {"rank1": 0.7, "rank5": 0.85, "rank10": 0.9, "rank20": 0.95, "mAP": 0.6,
               "mINP": 0.3}
    rows = metric_rows(dict(forward, reverse_direction=reverse), tag="trained")
    assert [row["label"] for row in rows] == [
        "This evaluation (trained)", "Reverse direction (gallery images as queries)",
        "Both directions: mean ± std"]
    both = {cell["key"]: cell["text"] for cell in rows[2]["cells"]}
    # rank-1: mean 60.00, sample std of (50, 70) = 14.14
    assert both["rank1"] == "60.00 ± 14.14"
    assert both["mAP"] == "50.00 ± 14.14"


def _command_line(*arguments):
    environment = dict(os.environ, PYTHONPATH=REPOSITORY)
    return subprocess.run([sys.executable, "-m", "reid_tf.report", *arguments],
                          capture_output=True, text=True, env=environment, timeout=120)


def test_command_line_rebuilds_the_page_and_names_missing_data(standard_run, tmp_path):
    folder, _, _ = standard_run
    with open(os.path.join(folder, "report.html"), encoding="utf-8") as handle:
        written = handle.read()
    rebuilt_path = str(tmp_path / "rebuilt.html")
    done = _command_line(folder, f"--report_file_path={rebuilt_path}")
    assert done.returncode == 0, done.stderr
    with open(rebuilt_path, encoding="utf-8") as handle:
        assert handle.read() == written
    empty = tmp_path / "empty_run"
    empty.mkdir()
    failed = _command_line(str(empty))
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert os.path.join(str(empty), REPORT_DATA_FILE) in lines[0]
    assert "--save_data_to_disk" in lines[0] and "Traceback" not in failed.stderr
    with pytest.raises(ReportDataError, match="--save_data_to_disk"):
        load_report_data(str(empty))
