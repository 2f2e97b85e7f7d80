"""Attention modes: what the network looks at, grouped over a whole audit (in the spirit of SpRAy,
Lapuschkin et al. 2019: attribution maps -> embedding -> clustering).

Each frame's compact mask is scaled to a distribution p; the embedding is sqrt(p) (Euclidean distances between
those are Hellinger distances between the masks). k-means (scikit-learn) clusters the embeddings for every k
in K_RANGE and keeps the k with the best silhouette score (on at most SAMPLE frames). Each mode has its frame
count, its typical mask (the mean distribution of its frames) and the EXAMPLES frames nearest to its centre.
"""
from __future__ import annotations

import numpy as np

from vbp_rt.extras import require

from .compute import distributions

K_RANGE = range(2, 9)
SAMPLE = 3000
EXAMPLES = 6
SEED = 0


def embed(compact: np.ndarray) -> np.ndarray:
    return np.sqrt(distributions(compact)).reshape(len(compact), -1)


def find_modes(compact: np.ndarray, k: int | None = None) -> dict:
    """label (N,), center (K,h,w) typical masks, count (K,), examples (K,EXAMPLES) frame rows (-1 padded),
    ordered by count, largest first. `k` fixes the number of modes (default: chosen by silhouette)."""
    cluster = require("sklearn.cluster", "audit", "the attention modes of vbp audit")
    metrics = require("sklearn.metrics", "audit", "the attention modes of vbp audit")
    x = embed(compact)
    n = len(x)
    if n < 3:
        return _summary(x, compact, np.zeros(n, int))
    rng = np.random.default_rng(SEED)
    sample = rng.choice(n, min(n, SAMPLE), replace=False)
    best = None
    for kk in ([k] if k else [kk for kk in K_RANGE if kk < n]):
        km = cluster.KMeans(n_clusters=kk, n_init=4, random_state=SEED).fit(x)
        labels = km.labels_
        if len(np.unique(labels[sample])) < 2:
            quality = -1.0
        else:
            quality = metrics.silhouette_score(x[sample], labels[sample])
        if best is None or quality > best[0]:
            best = (quality, labels)
    return _summary(x, compact, best[1])


def _summary(x, compact, labels) -> dict:
    ids = [c for c in np.unique(labels)]
    ids.sort(key=lambda c: -(labels == c).sum())
    relabel = np.zeros(labels.max() + 1 if len(labels) else 1, int)
    for new, c in enumerate(ids):
        relabel[c] = new
    labels = relabel[labels] if len(labels) else labels
    p = distributions(compact)
    centers, counts, examples = [], [], []
    for c in range(len(ids)):
        rows = np.flatnonzero(labels == c)
        centers.append(p[rows].mean(0))
        counts.append(len(rows))
        d = ((x[rows] - x[rows].mean(0)) ** 2).sum(1)
        ex = rows[np.argsort(d)[:EXAMPLES]]
        examples.append(np.pad(ex, (0, EXAMPLES - len(ex)), constant_values=-1))
    shape = compact.shape[1:]
    return {"label": labels.astype(np.int16), "center": np.array(centers, np.float32).reshape(-1, *shape),
            "count": np.array(counts, np.int64), "examples": np.array(examples, np.int64).reshape(-1, EXAMPLES)}
