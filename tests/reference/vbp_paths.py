"""Brute-force VisualBackProp by Theorem 1 of Bojarski et al.: enumerate every path.

The value at input position X is proportional to the sum, over all paths from X up to a neuron of
the last conv layer in the channel-averaged graph, of the product of the averaged activations of the
map neurons on the path. An edge joins position u of a layer's input to position i of its output
when u = i*stride - pad + a*dilation for a kernel offset a (per axis). Intermediate pooling
positions are path nodes with weight 1. No transposed convolution is used here.
"""
from __future__ import annotations

import numpy as np


def parents(op, i: int, j: int):
    """Input positions of `op` (a vbp_rt.graph.SpatialOp) that output position (i, j) reads."""
    out = []
    for a in range(op.kernel[0]):
        u = i * op.stride[0] - op.padding[0] + a * op.dilation[0]
        if not 0 <= u < op.in_hw[0]:
            continue
        for b in range(op.kernel[1]):
            v = j * op.stride[1] - op.padding[1] + b * op.dilation[1]
            if 0 <= v < op.in_hw[1]:
                out.append((u, v))
    return out


def path_sum_mask(averages: list, chain) -> np.ndarray:
    """VBP by path enumeration for ONE image. averages: list of (h, w) float64 arrays, shallow -> deep."""
    n_levels = len(chain.links)
    h_in, w_in = chain.input_shape[1:]
    result = np.zeros((h_in, w_in))

    def walk_down(level: int, pos, weight: float):
        """From map `level` at `pos` with path product `weight`, follow every path down to the input."""
        # expand through the spatial ops of this link (deepest op first); each position is a path node
        frontier = [(pos, weight)]
        for op in reversed(chain.links[level].ops):
            nxt = []
            for (i, j), w in frontier:
                for p in parents(op, i, j):
                    nxt.append((p, w))
            frontier = nxt
        if level == 0:
            for (u, v), w in frontier:
                result[u, v] += w
        else:
            below = averages[level - 1]
            for (u, v), w in frontier:
                walk_down(level - 1, (u, v), w * below[u, v])

    deepest = averages[-1]
    for i in range(deepest.shape[0]):
        for j in range(deepest.shape[1]):
            if deepest[i, j] != 0:
                walk_down(n_levels - 1, (i, j), float(deepest[i, j]))
    return result


def normalize(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)
