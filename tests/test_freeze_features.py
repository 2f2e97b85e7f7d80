"""`vbp train --freeze-features`: the head alone trains on cached conv outputs; the conv layers, their
BatchNorm statistics and so every VBP mask stay those of --init."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from vbp_rt.data.store import StoreReader
from vbp_rt.trainer.feature_cache import FeatureCache
from vbp_rt.trainer.train import TrainConfig, train

from vbp_rt import explain
from vbp_rt.cli import main
from vbp_rt.models import build, load_model, read_checkpoint, save_checkpoint

from .trainer_helpers import HEIGHT, TINY_NET, make_store, train_args


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "drive.h5", frames=60)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny NetHVF with non-trivial BatchNorm statistics, as a half-precision checkpoint."""
    torch.manual_seed(3)
    net = build("nethvf", height=HEIGHT, channels=TINY_NET["channels"], strides=(), fc=TINY_NET["fc"])
    with torch.no_grad():
        for m in net.features:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(0.1, 0.4)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("init") / "start.pt"
    save_checkpoint(path, net, half=True)
    return path


def frozen(store, out, start, **kw) -> TrainConfig:
    opts = dict(epochs=3, batch_size=4, lr=3e-3, workers=0, probes=2, height=HEIGHT, net=TINY_NET, snapshots=(),
                flip=0.5, init=str(start), freeze_features=True)
    opts.update(kw)
    return TrainConfig(store=str(store), arch="nethvf", out=str(out), **opts)


def test_only_the_head_learns_and_vbp_masks_stay(store, start, tmp_path):
    result = train(frozen(store, tmp_path / "run", start))
    before, after = read_checkpoint(start)["state_dict"], read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    feats = [k for k in before if k.startswith("features.")]
    assert any("running_mean" in k for k in feats) and any(k.endswith("weight") for k in feats)
    for k in feats:  # conv weights and BatchNorm statistics exactly as loaded
        torch.testing.assert_close(after[k].float(), before[k].float(), rtol=0, atol=0)
    head = [k for k in before if k.startswith("head.") and k.endswith("weight")]
    assert all(not torch.allclose(after[k].float(), before[k].float(), atol=1e-4) for k in head)
    x = torch.rand(4, 1, HEIGHT, 351)
    a, b = explain(load_model(start), x, "vbp"), explain(load_model(tmp_path / "run" / "last.pt"), x, "vbp")
    torch.testing.assert_close(b.mask, a.mask, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(b.prediction, a.prediction, atol=1e-3)
    rmse = [h["val_rmse"] for h in result["history"]]
    assert rmse[-1] < rmse[0], rmse  # the head does learn
    with StoreReader(store) as r:  # the last validation (from cached conv outputs) against the whole model
        s = r.split("test")
        x, y = torch.from_numpy(r.images("hvf")[s]).float().unsqueeze(1) / 255, r.angle[s].astype(np.float64)
    with torch.no_grad():
        pred = load_model(tmp_path / "run" / "last.pt").float().eval()(x)[:, 0].double().numpy()
    assert rmse[-1] == pytest.approx(float(np.sqrt(np.mean((pred - y) ** 2))), rel=1e-5)


def test_cached_epochs_equal_recomputed_ones(store, start, tmp_path):
    """With batches of 6, epoch 1 sees all 54 training frames, so epochs 2-3 of one run train from the cache
    and labels alone; a run resumed after epoch 1 starts with an empty cache and recomputes the conv outputs
    from the images: the weights must agree."""
    train(frozen(store, tmp_path / "straight", start, batch_size=6))
    train(frozen(store, tmp_path / "split", start, epochs=1, batch_size=6))
    train(resume_dir=tmp_path / "split", epochs=3)
    a, b = (read_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "split"))
    assert a["position"] == b["position"]
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-5, atol=1e-6)


def test_the_cache_computes_each_frame_once_in_both_orientations():
    calls = []

    def encode(x):
        calls.append(len(x))
        return x[:, :, :2, :3] * 2

    def enc(x):
        return x[:, :, :2, :3] * 2

    cache = FeatureCache(encode, np.array([7, 3, 12, 5]), np.array([0.7, 0.3, 1.2, 0.5]))
    np.testing.assert_array_equal(cache.labels, np.float32([0.3, 0.5, 0.7, 1.2]))  # sorted with the frames
    x = torch.rand(3, 1, 4, 4)
    first = cache(x, [12, 3, 7], torch.tensor([False, True, False]), "cpu")
    torch.testing.assert_close(first, enc(x))
    assert calls == [3, 3] and cache.share_filled == 6 / 8 and not cache.complete
    y = torch.rand(3, 1, 4, 4)  # other pixels: cached rows come back as stored, new ones are computed
    second = cache(y, [3, 3, 5], torch.tensor([True, False, True]), "cpu")
    assert calls == [3, 3, 1, 1] and cache.complete
    torch.testing.assert_close(second[0], first[1])
    torch.testing.assert_close(second[1], enc(x[1:2].flip(-1))[0])  # frame 3 unmirrored: the mirror of what x held
    torch.testing.assert_close(second[2], enc(y[2:3])[0])
    third = cache(None, [5, 12], torch.tensor([False, True]), "cpu")  # complete: no images needed
    torch.testing.assert_close(third, torch.cat([enc(y[2:3].flip(-1)), enc(x[0:1].flip(-1))]))
    assert calls == [3, 3, 1, 1]
    with pytest.raises(KeyError):
        cache(x[:1], [4], torch.tensor([False]), "cpu")
    plain = FeatureCache(encode, np.array([1, 2]), np.zeros(2), mirrored=False)
    plain(x[:2], [2, 1], torch.tensor([False, False]), "cpu")
    assert plain.complete and calls[-1] == 2
    with pytest.raises(ValueError, match="unmirrored"):
        plain(x[:1], [1], torch.tensor([True]), "cpu")


def test_freezing_needs_init(store, tmp_path, capsys):
    with pytest.raises(ValueError, match="--freeze-features trains the head"):
        TrainConfig(store=str(store), arch="nethvf", out=str(tmp_path / "r"), freeze_features=True)
    assert main(["train", *train_args(store, tmp_path / "r", "--freeze-features")]) == 2
    assert "without --init" in capsys.readouterr().err and not (tmp_path / "r").exists()
