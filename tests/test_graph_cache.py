"""vbp_rt.graph_cache: a second Runtime of the same checkpoint starts from the stored graph and computes the same
masks; a damaged entry is rebuilt; a changed checkpoint or method set never gets another's graph."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from vbp_rt import graph_cache
from vbp_rt.models import load_model, resolve_model_path, save_checkpoint
from vbp_rt.runtime import Runtime


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VBP_RT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "graphs"


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "net.pt"
    shutil.copy(resolve_model_path("netsvf"), path)
    return path


def _frames(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 135, 640), dtype=np.uint8)


def test_second_start_uses_the_stored_graph_and_gives_the_same_masks(cache, checkpoint):
    first = Runtime(checkpoint, backend="ort-cpu", methods=("vbp",))
    assert not first.graph_cached and len(list(cache.glob("*.onnx"))) == 1
    second = Runtime(checkpoint, backend="ort-cpu", methods=("vbp",))
    assert second.graph_cached and second.config == first.config and second.spec == first.spec
    a, b = first.run(_frames()), second.run(_frames())
    np.testing.assert_array_equal(a.masks["vbp"], b.masks["vbp"])
    np.testing.assert_array_equal(a.prediction, b.prediction)
    reference = Runtime(checkpoint, backend="torch-cpu", methods=("vbp",)).run(_frames())  # never cached
    np.testing.assert_allclose(b.masks["vbp"], reference.masks["vbp"], atol=2e-5)


def test_a_truncated_entry_is_rebuilt(cache, checkpoint, caplog):
    expected = Runtime(checkpoint, backend="ort-cpu", methods=("vbp",)).run(_frames()).masks["vbp"]
    (entry,) = cache.glob("*.onnx")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="vbp_rt.graph_cache"):
        rt = Runtime(checkpoint, backend="ort-cpu", methods=("vbp",))
    assert not rt.graph_cached and "unreadable" in caplog.text
    np.testing.assert_array_equal(rt.run(_frames()).masks["vbp"], expected)
    assert Runtime(checkpoint, backend="ort-cpu", methods=("vbp",)).graph_cached  # stored again, whole


def test_garbage_in_the_cache_is_not_fatal(cache, checkpoint):
    key = graph_cache.key(checkpoint, methods=["vbp"], eps=None, input_shape=None, spec=None)
    cache.mkdir(parents=True)
    graph_cache.entry(key).write_bytes(b"not an onnx file")
    assert graph_cache.load(key) is None and not graph_cache.entry(key).exists()


def test_changed_weights_and_other_methods_get_their_own_graph(cache, checkpoint):
    before = Runtime(checkpoint, backend="ort-cpu", methods=("vbp",)).run(_frames()).masks["vbp"]
    net = load_model(checkpoint)
    with torch.no_grad():
        net.features[1].weight.mul_(-1.0)
    save_checkpoint(checkpoint, net)
    after = Runtime(checkpoint, backend="ort-cpu", methods=("vbp",))
    assert not after.graph_cached
    assert np.abs(after.run(_frames()).masks["vbp"] - before).max() > 1e-3
    both = Runtime(checkpoint, backend="ort-cpu", methods=("vbp", "lrp"))
    assert not both.graph_cached and set(both.run(_frames(1)).masks) == {"vbp", "lrp"}
    assert len(list(cache.glob("*.onnx"))) == 3


def test_keys_follow_the_settings(checkpoint):
    k = graph_cache.key(checkpoint, methods=["vbp"], eps=None)
    assert k == graph_cache.key(checkpoint, methods=["vbp"], eps=None)
    assert k != graph_cache.key(checkpoint, methods=["lrp", "vbp"], eps=None)
    assert k != graph_cache.key(checkpoint, methods=["vbp"], eps=10.0)
