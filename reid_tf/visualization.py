"""Pictures of an evaluation: the CMC curve, a rank list, and training curves (matplotlib Agg)."""
import os

import numpy as np

QUERY_COLOUR = (255, 160, 0)     # RGB: orange frame around the query
CORRECT_COLOUR = (0, 200, 0)     # green: same identity
WRONG_COLOUR = (220, 0, 0)       # red: another identity


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_cmc_curve(cmc, file_path, title="CMC", label=None):
    """Write the CMC curve (rank 1..len(cmc), matching rate in %) to ``file_path``."""
    plt = _pyplot()
    cmc = np.asarray(cmc, dtype=np.float64)
    ranks = np.arange(1, len(cmc) + 1)
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    axis.plot(ranks, 100.0 * cmc, marker="o", markersize=3, label=label)
    for rank in (1, 5, 10):
        if rank <= len(cmc):
            axis.annotate(f"{100 * cmc[rank - 1]:.1f}", (rank, 100 * cmc[rank - 1]),
                          textcoords="offset points", xytext=(4, -12), fontsize=8)
    axis.set_xlabel("Rank")
    axis.set_ylabel("Matching rate (%)")
    axis.set_ylim(0, 100)
    axis.set_xlim(1, len(cmc))
    axis.grid(True, alpha=0.3)
    axis.set_title(title)
    if label:
        axis.legend(loc="lower right")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    figure.savefig(file_path)
    plt.close(figure)
    return file_path


def _thumbnail(path, height, width, colour, border=4):
    import cv2
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        image = np.full((height, width, 3), 128, np.uint8)
    else:
        image = cv2.cvtColor(cv2.resize(image, (width - 2 * border, height - 2 * border)),
                             cv2.COLOR_BGR2RGB)
        image = cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_CONSTANT,
                                   value=colour)
    return image


def draw_rank_list(distmat, query_paths, gallery_paths, q_pids, g_pids, q_camids, g_camids,
                   file_path, num_queries=8, top_k=10, remove_same_camera=True,
                   thumbnail_size=(128, 64), seed=0):
    """Write a rank-list image: each row is a query (orange) and its ``top_k`` gallery matches,
    green when the identity is the query's, red otherwise.

    Gallery items the metric ignores (same identity and same camera as the query) are left out,
    as in :func:`reid_tf.evaluation.metrics.cmc_map`. Queries are picked evenly (seeded).
    """
    import cv2
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    height, width = thumbnail_size
    rng = np.random.default_rng(seed)
    candidates = [q for q in range(len(q_pids)) if np.any(g_pids == q_pids[q])]
    if not candidates:
        candidates = list(range(len(q_pids)))
    chosen = sorted(rng.choice(candidates, size=min(num_queries, len(candidates)),
                               replace=False).tolist())
    gap = 10
    rows = []
    for q in chosen:
        order = np.argsort(distmat[q], kind="stable")
        if remove_same_camera:
            keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
            order = order[keep]
        order = order[:top_k]
        tiles = [_thumbnail(query_paths[q], height, width, QUERY_COLOUR),
                 np.full((height, gap, 3), 255, np.uint8)]
        for g in order:
            colour = CORRECT_COLOUR if g_pids[g] == q_pids[q] else WRONG_COLOUR
            tiles.append(_thumbnail(gallery_paths[g], height, width, colour))
        while len(tiles) < top_k + 2:
            tiles.append(np.full((height, width, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    canvas = np.concatenate(rows, axis=0) if rows else np.full((height, width, 3), 255, np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    cv2.imwrite(file_path, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    return file_path


def plot_history(history_csv_path, output_folder):
    """One PNG per numeric column of the training history CSV (x axis: global epoch)."""
    import pandas as pd
    plt = _pyplot()
    history = pd.read_csv(history_csv_path)
    os.makedirs(output_folder, exist_ok=True)
    written = []
    x = history["global_epoch"] if "global_epoch" in history else np.arange(1, len(history) + 1)
    for column in history.columns:
        if column in ("phase", "epoch", "global_epoch"):
            continue
        values = pd.to_numeric(history[column], errors="coerce")
        if values.notna().sum() == 0:
            continue
        figure, axis = plt.subplots(figsize=(5, 3.5), dpi=100)
        mask = values.notna()
        axis.plot(np.asarray(x)[mask], values[mask], marker="o", markersize=2,
                  label=f"{column} (last {values[mask].iloc[-1]:.4g})")
        axis.set_xlabel("epoch")
        axis.set_title(column)
        axis.legend(loc="best", fontsize=8)
        axis.grid(True, alpha=0.3)
        figure.tight_layout()
        path = os.path.join(output_folder, f"{column}.png")
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written
