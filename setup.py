"""vbp-rt: real-time VisualBackProp for driving CNNs.

One import name is installed, `vbp_rt`: the engine (vbp_rt/) and, mapped with `package_dir` without moving
the folders, its front ends and data layer: data/ -> vbp_rt.data, trainer/ -> vbp_rt.trainer,
viewer/ -> vbp_rt.viewer, bench/ -> vbp_rt.bench. A user's own `data.py` never collides with them.
"""
from setuptools import find_packages, setup

MAPPED = {"data": "data", "trainer": "trainer", "viewer": "viewer", "bench": "bench"}  # vbp_rt.<name> <- folder


def packages() -> list:
    found = find_packages(include=["vbp_rt", "vbp_rt.*"])
    for name, folder in MAPPED.items():
        found += [f"vbp_rt.{name}"] + [f"vbp_rt.{name}.{p}" for p in find_packages(where=folder)]
    return found


EXTRAS = {
    "viewer": ["PyQt5>=5.15", "pyqtgraph>=0.13"],  # vbp view, the training monitor
    "ingest": ["rosbags>=0.9.20"],  # vbp data udacity on ROS bags
    "report": ["matplotlib>=3.7"],  # plots of vbp bench, vbp eval
    "audit": ["scikit-learn>=1.3"],  # vbp audit's attention modes (k-means)
    "ray": ["ray>=2.9"],  # vbp audit --ray: sources fanned out over a Ray cluster
}
EXTRAS["all"] = sorted({r for reqs in EXTRAS.values() for r in reqs})
EXTRAS["test"] = EXTRAS["all"] + ["pytest>=7", "pytest-qt>=4.2", "captum>=0.7", "scikit-learn>=1.3",
                                    "hypothesis>=6"]
# torch methods (LRP, gradients, Grad-CAM) on ONNX models from elsewhere (vbp_rt.onnx_torch). Not in [all]:
# onnx2torch declares torchvision, which would replace the CPU torch; install it with pip install --no-deps.
EXTRAS["convert"] = ["onnx2torch>=1.5"]
EXTRAS["peers"] = ["captum>=0.7"]  # zennit, grad-cam: pip install --no-deps zennit grad-cam ttach (bench/README.md)
# onnxruntime comes from exactly one of these two (vbp_rt/ort_install.py says why and which one a machine
# needs; scripts/bootstrap.sh adds it to the extras it installs). No other extra names an onnxruntime.
# 1.18: the CUDA provider's use_tf32 option.
EXTRAS["cpu"] = ["onnxruntime>=1.18"]
EXTRAS["gpu"] = ["onnxruntime-gpu>=1.18"]

setup(
    name="vbp-rt",
    version="0.1.0",
    description="Real-time VisualBackProp video debugging for end-to-end steering CNNs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages(),
    package_dir={"vbp_rt": "vbp_rt", **{f"vbp_rt.{name}": folder for name, folder in MAPPED.items()}},
    package_data={"vbp_rt": ["weights/*.pt", "examples/*"]},
    install_requires=[
        "torch>=2.1",  # CPU machines: install torch==2.13.0 first (scripts/bootstrap.sh does)
        "numpy>=1.24",
        "h5py>=3.8",
        "opencv-python-headless>=4.8",
        "av>=12",  # FFmpeg: decoding videos past damaged frames, writing kill-safe (fragmented) MP4
        "tqdm>=4.60",
        "onnx>=1.15",
        # onnxruntime: extra [cpu] or [gpu], never both (they overwrite each other's files)
        "onnxscript>=0.1",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["vbp=vbp_rt.cli:main"]},
)
