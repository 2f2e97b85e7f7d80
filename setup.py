"""vbp-rt: real-time VisualBackProp for driving CNNs (engine, data, trainer, viewer, bench)."""
from setuptools import find_packages, setup

setup(
    name="vbp-rt",
    version="0.1.0",
    description="Real-time VisualBackProp video debugging for end-to-end steering CNNs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vbp_rt", "vbp_rt.*", "data", "data.*", "trainer", "trainer.*",
                                    "viewer", "viewer.*", "bench", "bench.*"]),
    package_data={"vbp_rt": ["weights/*.pt", "examples/*"]},
    install_requires=[
        "torch>=2.1",  # CPU machines: install torch==2.13.0 first (scripts/bootstrap.sh does)
        "numpy>=1.24",
        "h5py>=3.8",
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "onnxscript>=0.1",
        "rosbags>=0.9.20",
        "matplotlib>=3.7",
        "PyQt5>=5.15",
        "pyqtgraph>=0.13",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-qt>=4.2", "captum>=0.7", "scikit-learn>=1.3"],
        "peers": ["captum>=0.7"],  # zennit, grad-cam: pip install --no-deps zennit grad-cam ttach (bench/README.md)
        "gpu": ["onnxruntime-gpu>=1.17"],
    },
    entry_points={"console_scripts": ["vbp=vbp_rt.cli:main"]},
)
