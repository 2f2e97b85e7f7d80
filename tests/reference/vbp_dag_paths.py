"""Brute-force VisualBackProp on a DAG of maps: enumerate every path, one at a time.

Theorem 1 of Bojarski et al. writes the VBP value of input position X as a sum, over the paths from X to a
neuron of the last feature maps in the channel-averaged network, of the product of the averaged
activations on the path. With branches (a residual Add, a Concat of parallel branches) the network has more
paths: a path may leave a map through any of its outgoing edges (each conv/pool path to a deeper map, or an
identity skip), and it may end at any map that feeds the prediction directly (a sink). This module lists
every such path explicitly (no transposed convolution, no dynamic programming) and sums their products.
The graph is given as (input_shape, maps) with maps[i] = (edges, sink) and edges = [(source, ops, count)]
where source is a shallower map's index or -1 for the input and ops are vbp_rt.graph.SpatialOp-like objects.
"""
from __future__ import annotations

import numpy as np

from .vbp_paths import parents


def enumerate_paths(averages: list, input_shape, maps) -> tuple:
    """(mask at the input size, number of paths) for ONE image. averages: (h,w) float64 per map."""
    result = np.zeros(tuple(input_shape[1:]))
    count = [0]

    def down(level: int, pos, weight: float):
        """At map `level`, position `pos`, with the product so far (this map's activation included): follow
        every edge into this map, through every window position, to the shallower map or the input."""
        for source, ops, multiplicity in maps[level][0]:
            frontier = [pos]
            for op in reversed(ops):
                frontier = [p for q in frontier for p in parents(op, *q)]
            for _ in range(multiplicity):
                for (u, v) in frontier:
                    if source == -1:
                        result[u, v] += weight
                        count[0] += 1
                    elif averages[source][u, v] != 0:
                        down(source, (u, v), weight * averages[source][u, v])

    for level, (_, sink) in enumerate(maps):
        if not sink:
            continue
        a = averages[level]
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                if a[i, j] != 0:
                    down(level, (i, j), float(a[i, j]))
    return result, count[0]
