"""Faithfulness metrics for attribution masks, as pure functions (`vbp eval` runs them on a drive).

Masks and images are numpy arrays (H,W) or batches (N,H,W); a `predict` argument is any function
from a float batch (N,H,W) to the explained outputs (N,) (steering angles), so the metrics can be
checked on models whose right answer is known.

- Pointing: share of the mask's mass on a ground-truth region, and ROC-AUC of the mask as a
  per-pixel detector of that region.
- Region perturbation (Samek et al. 2017): replace regions by noise, most relevant first; AOPC is the
  mean absolute change of the output over the steps (a random order is the baseline).
- Keep-top fraction (Chen et al.): keep only the most relevant pixels, measure the output change.
- Rank correlation (Spearman) for the sanity checks (Adebayo et al.; Nie et al.) and Pearson
  correlation for temporal stability.
"""
from __future__ import annotations

import copy

import cv2
import numpy as np
import torch
from torch import nn


def mass_share(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Share of each mask's total mass that lies on `region` (0/1), per image; NaN for an all-zero mask."""
    mask, region = _batch(mask), _batch(region).astype(bool)
    total = mask.sum(axis=(1, 2), dtype=np.float64)
    on = (mask * region).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, on / np.where(total > 0, total, 1), np.nan)


def area_share(region: np.ndarray) -> np.ndarray:
    """Share of the image covered by `region`: what a uniform mask would score on `mass_share`."""
    return _batch(region).astype(bool).mean(axis=(1, 2))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened `x`, ties sharing their average rank."""
    x = np.ravel(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    edges = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat((edges[:-1] + edges[1:] + 1) / 2.0, np.diff(edges))
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the 0/1 `labels` (Mann-Whitney U); NaN without both classes."""
    labels = np.ravel(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; NaN when one of them is constant."""
    return pearson(average_ranks(a), average_ranks(b))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; NaN when one of them is constant."""
    a = np.ravel(a).astype(np.float64)
    b = np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def edge_map(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of a gray image (H,W): what "recovering the image" looks like."""
    img = image.astype(np.float32)
    return np.hypot(cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3))


def region_order(relevance: np.ndarray, size: int) -> np.ndarray:
    """Indices of the size x size regions of a (H,W) map (row-major grid, partial regions at the
    right/bottom edges included), sorted by decreasing summed relevance (ties by index)."""
    h, w = relevance.shape
    gh, gw = -(-h // size), -(-w // size)
    padded = np.zeros((gh * size, gw * size), np.float64)
    padded[:h, :w] = relevance
    sums = padded.reshape(gh, size, gw, size).sum(axis=(1, 3)).ravel()
    return np.argsort(-sums, kind="stable")


def perturbed_sequence(image: np.ndarray, order: np.ndarray, steps: int, size: int,
                       noise: np.ndarray) -> np.ndarray:
    """(steps+1, H, W): step k is `image` with the first k regions of `order` replaced by `noise`."""
    h, w = image.shape
    gw = -(-w // size)
    out = np.empty((steps + 1, h, w), image.dtype)
    cur = image.copy()
    out[0] = cur
    for k, region in enumerate(order[:steps], start=1):
        r, c = divmod(int(region), gw)
        sl = np.s_[r * size:(r + 1) * size, c * size:(c + 1) * size]
        cur[sl] = noise[sl]
        out[k] = cur
    return out


def perturbation_curve(predict, image: np.ndarray, relevance: np.ndarray, steps: int, size: int,
                       noise: np.ndarray) -> np.ndarray:
    """|f(x_k) - f(x_0)| for k = 0..steps, removing the most relevant regions first."""
    seq = perturbed_sequence(image, region_order(relevance, size), steps, size, noise)
    out = np.asarray(predict(seq), np.float64)
    return np.abs(out - out[0])


def aopc(curve: np.ndarray) -> float:
    """Area over the perturbation curve: the mean of the output changes over steps 0..L (Samek et al.,
    with the change measured as an absolute difference, as a steering angle can move either way)."""
    return float(np.mean(curve))


def keep_top(image: np.ndarray, mask: np.ndarray, fraction: float) -> np.ndarray:
    """`image` with every pixel outside the `fraction` most relevant ones (by `mask`) set to zero."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = int(round(fraction * mask.size))
    keep = np.zeros(mask.size, bool)
    keep[np.argsort(-np.ravel(mask), kind="stable")[:k]] = True
    return np.where(keep.reshape(mask.shape), image, 0).astype(image.dtype)


def topk_agreement(logits_a: np.ndarray, logits_b: np.ndarray, k: int = 5) -> np.ndarray:
    """Per row, the share of the top-k classes of `logits_a` that are also in the top-k of `logits_b`."""
    ta = np.argsort(-logits_a, axis=1)[:, :k]
    tb = np.argsort(-logits_b, axis=1)[:, :k]
    return np.array([len(set(a) & set(b)) / k for a, b in zip(ta, tb)])


def consecutive_correlation(masks: np.ndarray, next_masks: np.ndarray) -> np.ndarray:
    """Pearson correlation between each mask and the mask of the following frame."""
    return np.array([pearson(a, b) for a, b in zip(masks, next_masks)])


def randomization_steps(model: nn.Module) -> list:
    """(label, module names) for cascading randomization (Adebayo et al.), top first: the whole MLP
    head as one step ("head"), then each convolution with the BatchNorm right before it."""
    head, convs, pending_bn = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            pending_bn.append(name)
        elif isinstance(m, nn.Conv2d):
            convs.append((name, pending_bn + [name]))
            pending_bn = []
        elif isinstance(m, nn.Linear):
            head.append(name)
    if pending_bn and convs:  # a BatchNorm after the last conv belongs to it
        convs[-1][1].extend(pending_bn)
    return ([("head", head)] if head else []) + convs[::-1]


def cascading_randomization(model: nn.Module, seed: int = 0):
    """Yield (label, model) with ever more layers re-initialized, top first (see `randomization_steps`).
    One copy is modified step by step; `model` itself is left untouched."""
    rand = copy.deepcopy(model).eval()
    modules = dict(rand.named_modules())
    g = torch.Generator().manual_seed(seed)
    for label, names in randomization_steps(model):
        with torch.no_grad():
            for name in names:
                _reinitialize(modules[name], g)
        yield label, rand


def _reinitialize(m: nn.Module, g: torch.Generator) -> None:
    """Fresh weights: a scaled normal for conv/linear (He init), the defaults for BatchNorm."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.reset_parameters()
        return
    fan_in = m.weight[0].numel()
    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    if m.bias is not None:
        m.bias.zero_()


def bias_score_ratio(bias: np.ndarray, score: np.ndarray) -> np.ndarray:
    """b(x) / F(x) per image (Chen et al. Fig. 3); NaN where the score is zero."""
    bias, score = np.asarray(bias, np.float64), np.asarray(score, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(score != 0, bias / np.where(score != 0, score, 1), np.nan)


def _batch(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 2 else a
