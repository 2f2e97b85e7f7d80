"""Steering and sign networks from one builder, and their checkpoints (configs and the shipped-model table:
vbp_rt.model_config).

NetSVF / NetHVF follow Table 1 of Bojarski et al. (VisualBackProp): ten 3x3 convolutions without
padding, strides 1,2,1,2,..., channels 32,32,48,48,64,64,96,96,128,128, each conv preceded by
BatchNorm and followed by ReLU, then FC 1024-512-1 (steering wheel angle in degrees).

Height: the paper's text says 135 rows, but the output sizes in its Table 1 (123x638, 61x318, ...,
1x17) are only reproduced by 125 input rows. We default to 135 as the text says; `height` is a
parameter (125 reproduces the table exactly).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .model_config import CHECKPOINT_FORMAT, CONFIGS, NetConfig, resolve_model_path


class ConvNet(nn.Module):
    """BN -> Conv -> ReLU blocks, then an MLP head. `features` and `head` are plain Sequentials."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.config = cfg
        layers, c_in = [], cfg.in_channels
        for c_out, stride in zip(cfg.channels, cfg.strides):
            layers += ([nn.BatchNorm2d(c_in)] if cfg.batchnorm else []) + [
                nn.Conv2d(c_in, c_out, cfg.kernel, stride=stride), nn.ReLU()]
            c_in = c_out
        if cfg.final_bn:
            layers.append(nn.BatchNorm2d(c_in))
        self.features = nn.Sequential(*layers)
        if not cfg.batchnorm:  # without BatchNorm, a deep plain stack keeps its signal only with He init
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        self.features.eval()  # the size probe must not touch BatchNorm running statistics
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *cfg.input_shape)).numel()
        self.features.train()
        head, n_in = [nn.Flatten()], n_flat
        for n in cfg.fc:
            head += [nn.Linear(n_in, n), nn.ReLU()]
            n_in = n
        head.append(nn.Linear(n_in, cfg.outputs))
        self.head = nn.Sequential(*head)

    def encode(self, x):
        """The conv stack's output for input x (the head's input)."""
        if self.config.input_offset:  # part of the graph, so exports and VBP see it
            x = x - self.config.input_offset
        return self.features(x)

    def forward(self, x):
        return self.head(self.encode(x))


def build(cfg: NetConfig | str, **overrides) -> ConvNet:
    """Build a network from a config or an architecture name ("netsvf", "nethvf", "release", "sign")."""
    if isinstance(cfg, str):
        if cfg not in CONFIGS:
            raise ValueError(f"unknown architecture {cfg!r}; known: {', '.join(CONFIGS)}")
        cfg = CONFIGS[cfg](**{k: v for k, v in overrides.items() if k == "height"})
        for k, v in overrides.items():
            if k != "height":
                setattr(cfg, k, v)
        cfg.__post_init__()
    return ConvNet(cfg)


def to_input(images, config: NetConfig) -> torch.Tensor:
    """Pixel images (N,H,W), uint8 or float in pixel units -> the network's input (N,1,H,W) float32."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) * np.float32(config.input_scale))[:, None]


@torch.no_grad()
def outputs(model: nn.Module, images, batch_size: int = 16) -> np.ndarray:
    """The network's outputs (N, outputs) for pixel images (N,H,W), `batch_size` at a time."""
    model.eval()
    return np.concatenate([model(to_input(images[s:s + batch_size], model.config)).numpy()
                           for s in range(0, len(images), batch_size)])


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give it a normal file's permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checkpoint_dict(model: ConvNet, half: bool = False, **extra) -> dict:
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    return {"format": CHECKPOINT_FORMAT, "version": 1, "config": asdict(model.config), "state_dict": state, **extra}


def save_checkpoint(path, model: ConvNet, half: bool = False, **extra) -> None:
    """Write a checkpoint atomically; `extra` (optimizer state, epoch, metrics...) is stored alongside."""
    atomic_torch_save(checkpoint_dict(model, half=half, **extra), path)


def read_checkpoint(path) -> dict:
    """Load a checkpoint dict, with a clear error when the file is missing or not a vbp-rt checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise ValueError(f"checkpoint {path} is corrupt or not a torch file: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a vbp-rt checkpoint (expected a dict with format={CHECKPOINT_FORMAT!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> ConvNet:
    model = ConvNet(NetConfig(**ckpt["config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    return model.eval()


def load_model(name_or_path) -> ConvNet:
    """Load a torch model from a checkpoint path or a shipped model name, in eval mode."""
    return model_from_checkpoint(read_checkpoint(resolve_model_path(name_or_path)))
