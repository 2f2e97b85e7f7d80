"""What a network is and where its checkpoint lives, without torch: `NetConfig` and the architectures' configs,
the models shipped with the package and model-name resolution. vbp_rt.models builds and loads the networks
themselves; the onnxruntime path with a cached graph (vbp_rt.graph_cache) needs only this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT_FORMAT = "vbp-rt-checkpoint"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass
class NetConfig:
    """Everything needed to rebuild a network (stored in every checkpoint)."""

    arch: str = "netsvf"
    in_channels: int = 1
    height: int = 135
    width: int = 640
    channels: tuple = (32, 32, 48, 48, 64, 64, 96, 96, 128, 128)
    strides: tuple = ()  # empty: 1,2,1,2,...
    kernel: int = 3
    fc: tuple = (1024, 512)
    outputs: int = 1
    final_bn: bool = False
    batchnorm: bool = True  # False: no BatchNorm before the convs (Chen et al.'s with/without BN comparison)
    view: str = "svf"  # which store view (data.store) feeds this network
    input_scale: float = 1.0 / 255.0  # uint8 pixel -> network input
    input_offset: float = 0.0  # subtracted from the scaled input in forward (centring for a net without BatchNorm)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.channels = tuple(self.channels)
        self.fc = tuple(self.fc)
        self.strides = tuple(self.strides) or tuple(1 if i % 2 == 0 else 2 for i in range(len(self.channels)))
        if len(self.strides) != len(self.channels):
            raise ValueError(f"{len(self.strides)} strides for {len(self.channels)} conv layers")

    @property
    def input_shape(self) -> tuple:
        return (self.in_channels, self.height, self.width)


def netsvf_config(height: int = 135) -> NetConfig:
    return NetConfig(arch="netsvf", height=height, width=640, view="svf")


def nethvf_config(height: int = 135) -> NetConfig:
    return NetConfig(arch="nethvf", height=height, width=351, view="hvf")


def release_config() -> NetConfig:
    """The original VisualBackProp release's steering model: 1x125x640 in [0,1]."""
    return NetConfig(arch="release", height=125, width=640, channels=(8, 8, 16, 16, 24, 24, 36, 36, 48, 48),
                     fc=(128, 16), final_bn=True, view="svf")


def sign_config(classes: int = 43) -> NetConfig:
    """The traffic-sign classifier of the paper's Table 2 (125x125; logits, LogSoftmax left to the loss)."""
    return NetConfig(arch="sign", height=125, width=125, channels=(16, 16, 24, 24, 32, 32, 48, 48),
                     fc=(64,), outputs=classes, view="sign")


CONFIGS = {"netsvf": netsvf_config, "nethvf": nethvf_config, "release": release_config, "sign": sign_config}


def shipped_models() -> dict:
    """Names of the models shipped with the package -> checkpoint path."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.pt"))}


def resolve_model_path(name_or_path) -> Path:
    """A shipped model name ("netsvf", "nethvf") or a path to a checkpoint / ONNX file."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = shipped_models()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise FileNotFoundError(f"no model file {name_or_path!r} and no shipped model of that name "
                            f"(shipped: {', '.join(shipped) or 'none'})")
