"""Pictures of an evaluation: the CMC curve, distance histograms, a rank list, thumbnails and
training curves (matplotlib Agg, OpenCV)."""
import os

import numpy as np

QUERY_COLOUR = (255, 160, 0)     # RGB: orange frame around the query
CORRECT_COLOUR = (0, 200, 0)     # green: same identity
WRONG_COLOUR = (220, 0, 0)       # red: another identity
UNKNOWN_COLOUR = (150, 150, 150)  # grey: an identity is not known
CAPTION_HEIGHT = 14              # pixels of the distance line under a row of matches


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def cmc_figure(cmc, title="CMC", label=None, figsize=(6, 4), dpi=100):
    """A matplotlib figure of the CMC curve (rank 1..len(cmc), matching rate in %), with the
    rank-1, rank-5 and rank-10 values written next to their points. The caller closes it."""
    plt = _pyplot()
    cmc = np.asarray(cmc, dtype=np.float64)
    ranks = np.arange(1, len(cmc) + 1)
    figure, axis = plt.subplots(figsize=figsize, dpi=dpi)
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
    return figure


def plot_cmc_curve(cmc, file_path, title="CMC", label=None):
    """Write the CMC curve (rank 1..len(cmc), matching rate in %) to ``file_path``."""
    plt = _pyplot()
    figure = cmc_figure(cmc, title=title, label=label)
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    figure.savefig(file_path)
    plt.close(figure)
    return file_path


def distance_histogram_figure(positive, negative, title="Query-gallery distances", bins=50,
                              figsize=(6, 4), dpi=100):
    """A figure with the histograms (densities, shared bins) of the positive (same identity)
    and negative (other identity) distances; the legend gives each sample's size and median.
    The caller closes it."""
    plt = _pyplot()
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    values = np.concatenate([positive, negative])
    figure, axis = plt.subplots(figsize=figsize, dpi=dpi)
    if values.size:
        low, high = float(values.min()), float(values.max())
        edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
        for sample, name, colour in ((positive, "positive (same identity)", "tab:green"),
                                     (negative, "negative (other identity)", "tab:red")):
            if sample.size:
                axis.hist(sample, bins=edges, density=True, alpha=0.55, color=colour,
                          label=f"{name}: n={sample.size}, median {np.median(sample):.3g}")
        axis.legend(loc="upper right", fontsize=8)
    axis.set_xlabel("Distance (smaller = more similar)")
    axis.set_ylabel("Density")
    axis.grid(True, alpha=0.3)
    axis.set_title(title)
    figure.tight_layout()
    return figure


def figure_png_bytes(figure, close=True):
    """The PNG bytes of a matplotlib figure (closed afterwards unless ``close`` is False)."""
    import io
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    if close:
        _pyplot().close(figure)
    return buffer.getvalue()


def load_thumbnail(path, height, width, upscale=True):
    """The image file at ``path`` resized to ``height x width`` (RGB uint8), or None when it
    cannot be read. With ``upscale=False`` an image that already fits in the box keeps its
    size (the page scales it; the file stays small)."""
    import cv2
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return None
    if upscale or image.shape[0] > height or image.shape[1] > width:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def png_bytes(image, colours=None):
    """Optimised PNG bytes of an RGB uint8 array; ``colours`` (2..256) stores it with a
    palette of that many colours (fast octree), about 40% of the size for photographs."""
    import io
    from PIL import Image
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if colours is not None:
        picture = picture.quantize(colors=int(colours), method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


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


def _known(value):
    """Whether an identity is known (not None, not NaN)."""
    if value is None:
        return False
    try:
        return not np.isnan(value)
    except TypeError:  # a string identity
        return True


def _caption(text, width, height=CAPTION_HEIGHT):
    import cv2
    strip = np.full((height, width, 3), 255, np.uint8)
    if text:
        cv2.putText(strip, text, (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return strip


def draw_ranked_results(indices, query_paths, gallery_paths, file_path, distances=None,
                        query_pids=None, gallery_pids=None, thumbnail_size=(128, 64)):
    """Write a rank-list image of ranked results: row ``i`` is query ``query_paths[i]``
    (orange frame), a 10-pixel gap, then its matches ``gallery_paths[indices[i, 0]]``,
    ``indices[i, 1]``, ... (``-1``: none, a white tile). A match is framed green when its
    identity is the query's, red when another, grey when either identity is unknown (no
    ``query_pids`` / ``gallery_pids``, or a missing value). With ``distances`` (the shape of
    ``indices``) each match has its distance written under it (a caption strip of
    :data:`CAPTION_HEIGHT` pixels under every row).

    Size: ``Q * (h + caption + 4)`` pixels high (a 4-pixel white line under every row) and
    ``(1 + k) * w + 10`` wide for ``thumbnail_size = (h, w)`` and ``indices`` of shape
    ``(Q, k)``; no query: one white ``h x w`` tile."""
    import cv2
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 2 or len(indices) != len(query_paths):
        raise ValueError(f"indices must be (queries, k) for {len(query_paths)} query paths, got "
                         f"shape {indices.shape}.")
    if distances is not None:
        distances = np.asarray(distances, dtype=np.float64)
        if distances.shape != indices.shape:
            raise ValueError(f"distances of shape {distances.shape} for indices of shape "
                             f"{indices.shape}.")
    height, width = thumbnail_size
    gap = 10
    rows = []
    for q, ranked in enumerate(indices):
        query_pid = query_pids[q] if query_pids is not None else None
        tiles = [_thumbnail(query_paths[q], height, width, QUERY_COLOUR),
                 np.full((height, gap, 3), 255, np.uint8)]
        captions = [_caption("query", width), _caption("", gap)]
        for position, g in enumerate(ranked):
            if g < 0:
                tiles.append(np.full((height, width, 3), 255, np.uint8))
                captions.append(_caption("", width))
                continue
            gallery_pid = gallery_pids[g] if gallery_pids is not None else None
            if _known(query_pid) and _known(gallery_pid):
                colour = CORRECT_COLOUR if gallery_pid == query_pid else WRONG_COLOUR
            else:
                colour = UNKNOWN_COLOUR
            tiles.append(_thumbnail(gallery_paths[g], height, width, colour))
            captions.append(_caption(f"{distances[q, position]:.4f}" if distances is not None
                                     else "", width))
        rows.append(np.concatenate(tiles, axis=1))
        if distances is not None:
            rows.append(np.concatenate(captions, axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    canvas = np.concatenate(rows, axis=0) if rows else np.full((height, width, 3), 255, np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    if not cv2.imwrite(file_path, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write the rank-list image {file_path} (a .png or .jpg name?).")
    return file_path


def draw_rank_list(distmat, query_paths, gallery_paths, q_pids, g_pids, q_camids, g_camids,
                   file_path, num_queries=8, top_k=10, remove_same_camera=True,
                   thumbnail_size=(128, 64), seed=0):
    """Write a rank-list image: each row is a query (orange) and its ``top_k`` gallery matches,
    green when the identity is the query's, red otherwise (:func:`draw_ranked_results` of the
    ranks of ``distmat``).

    Gallery items the metric ignores (same identity and same camera as the query) are left out,
    as in :func:`reid_tf.evaluation.metrics.cmc_map`. Queries are picked evenly (seeded).
    """
    if not hasattr(distmat, "subset"):  # a FeatureDistances gives its rows on demand
        distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    rng = np.random.default_rng(seed)
    candidates = [q for q in range(len(q_pids)) if np.any(g_pids == q_pids[q])]
    if not candidates:
        candidates = list(range(len(q_pids)))
    chosen = sorted(rng.choice(candidates, size=min(num_queries, len(candidates)),
                               replace=False).tolist())
    ranked = np.full((len(chosen), top_k), -1, np.int64)
    for row, q in enumerate(chosen):
        order = np.argsort(distmat[q], kind="stable")
        if remove_same_camera:
            keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
            order = order[keep]
        order = order[:top_k]
        ranked[row, :len(order)] = order
    return draw_ranked_results(ranked, [query_paths[q] for q in chosen], gallery_paths,
                               file_path, query_pids=q_pids[chosen], gallery_pids=g_pids,
                               thumbnail_size=thumbnail_size)


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
