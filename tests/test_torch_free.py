"""A shipped model whose graph is in the graph cache starts on onnxruntime without importing torch: the Runtime and
`vbp view --headless` in fresh processes, with the masks the torch path gives. A cache miss still loads the
checkpoint into torch and exports it. The method table that `--methods` is checked against matches the methods."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from importlib import metadata as package_metadata

import numpy as np
import pytest

from tests.viewer_helpers import write_video
from vbp_rt import methods
from vbp_rt.runtime import Runtime

# A fresh process: a Runtime of the shipped NetSVF on ort-cpu, one batch of frames; its masks, its prediction and
# what it imported go to the folder given.
_RUNTIME = """
import json, sys
import numpy as np
from vbp_rt.runtime import Runtime
rt = Runtime("netsvf", backend="ort-cpu", methods=("vbp",))
r = rt.run(np.load(sys.argv[1]))
np.save(sys.argv[2], r.masks["vbp"])
np.save(sys.argv[3], r.prediction)
print(json.dumps({"graph_cached": rt.graph_cached, "backend": rt.backend, "torch": "torch" in sys.modules,
                  "onnx2torch": "onnx2torch" in sys.modules}))
"""

# A fresh process: `vbp view VIDEO --headless --frames 1 --methods vbp` through the command's own main, then what it
# imported.
_VIEW = """
import json, sys
from vbp_rt.cli import main
code = main(["view", *sys.argv[1:]])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def _run(code: str, cache, *args) -> dict:
    env = {**os.environ, "VBP_RT_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_only_torch() -> bool:
    try:
        return package_metadata.version("torch").endswith("+cpu")
    except package_metadata.PackageNotFoundError:
        return True


@pytest.fixture(scope="module")
def primed(tmp_path_factory):
    """A graph cache holding NetSVF's VBP graph, made by a cold start in a fresh process: (cache, frames, its masks,
    its prediction, what the cold start reported)."""
    folder = tmp_path_factory.mktemp("torch-free")
    cache = folder / "cache"
    frames = np.random.default_rng(3).integers(0, 256, (3, 135, 640), dtype=np.uint8)
    np.save(folder / "frames.npy", frames)
    cold = _run(_RUNTIME, cache, folder / "frames.npy", folder / "cold_mask.npy", folder / "cold_pred.npy")
    return cache, folder, cold


def test_a_cache_miss_loads_torch_and_exports(primed):
    cache, _, cold = primed
    assert cold == {"graph_cached": False, "backend": "ort-cpu", "torch": True, "onnx2torch": False}
    assert len(list((cache / "graphs").glob("*.onnx"))) == 1


def test_a_cached_graph_runs_without_torch_and_gives_the_same_masks(primed):
    cache, folder, _ = primed
    warm = _run(_RUNTIME, cache, folder / "frames.npy", folder / "warm_mask.npy", folder / "warm_pred.npy")
    assert warm == {"graph_cached": True, "backend": "ort-cpu", "torch": False, "onnx2torch": False}
    warm_mask, cold_mask = np.load(folder / "warm_mask.npy"), np.load(folder / "cold_mask.npy")
    np.testing.assert_array_equal(warm_mask, cold_mask)
    np.testing.assert_array_equal(np.load(folder / "warm_pred.npy"), np.load(folder / "cold_pred.npy"))
    frames = np.load(folder / "frames.npy")
    reference = Runtime("netsvf", backend="torch-cpu", methods=("vbp",)).run(frames)  # the torch engine
    np.testing.assert_allclose(warm_mask, reference.masks["vbp"], atol=2e-5)
    np.testing.assert_allclose(np.load(folder / "warm_pred.npy"), reference.prediction, rtol=1e-4, atol=1e-3)
    assert warm_mask.shape == (3, 135, 640) and 0.0 <= warm_mask.min() and warm_mask.max() <= 1.0


@pytest.mark.parametrize("backend", ["auto", "ort-cpu"])
def test_vbp_view_headless_writes_its_first_overlay_without_torch(primed, tmp_path, backend):
    if backend == "auto" and not _cpu_only_torch():
        pytest.skip("with a torch that may see a GPU, `auto` imports torch to ask it")
    cache, _, _ = primed
    video = write_video(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "overlay.mp4"
    done = _run(_VIEW, cache, video, "--headless", "--frames", "1", "--methods", "vbp", "--backend", backend,
                "--out", out)
    assert done == {"code": 0, "torch": False}
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["frames"] == 1 and summary["methods"] == ["vbp"] and summary["backend"] == "ort-cpu"
    assert out.stat().st_size > 0


def test_method_lists_are_read_without_torch():
    code = """
import sys
from vbp_rt.methods import available, parse_methods
assert parse_methods("vbp,lrp:eps=0.01") == {"vbp": ("vbp", {}), "lrp:eps=0.01": ("lrp", {"eps": 0.01})}
for text, why in [("vbp,nope", "unknown method 'nope'; known methods: affine, deconvnet"),
                  ("lrp:esp=1", "'lrp' has no option(s) esp; it takes: eps, target, bn")]:
    try:
        parse_methods(text)
    except ValueError as e:
        assert why in str(e), e
    else:
        raise AssertionError(text)
assert "gradcam" in available()
assert "torch" not in sys.modules, "torch imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_method_table_matches_the_methods():
    """BUILTIN lists every method of vbp_rt.methods with the options its function takes, in order."""
    for name in methods.BUILTIN:
        methods.get(name)  # imports the method modules
    ours = {n: f for n, f in methods.REGISTRY.items() if f.__module__.startswith("vbp_rt.methods.")}
    assert set(ours) == set(methods.BUILTIN)
    for name, fn in ours.items():
        params = list(inspect.signature(fn).parameters.values())[2:]
        taken = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        assert taken == methods.BUILTIN[name], name
        assert methods.options_of(name) == list(taken)
    assert set(methods.ONNX_METHODS) <= set(methods.BUILTIN)
