"""A model's input convention: how a camera frame becomes the tensor the network was trained on.

`InputSpec` says the colour order (gray, RGB, BGR, YUV), the layout (NCHW or NHWC), the size and how a frame
is fitted to it (an optional crop box, then resize or letterbox, or one of the project's road views), the
scale and the per-channel mean and std (`x = (pixel * scale - mean) / std`), and what the output is (name,
unit, label). It is read, in this order, from the ONNX metadata `vbp_rt.input` (written by `vbp export`),
from a sidecar file `MODEL.json` beside the model (e.g. `pilotnet.onnx.json`), and from command-line text
(`--input-spec color=rgb,scale=1/127.5,mean=1,std=1` or a JSON file); later sources override single keys.
When none says anything, the spec is assumed (gray, whole frame resized, scale 1/255) and `origin` says so.
See docs/byom.md.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from .data.preprocess import VIEWS, View, model_view, view_for

COLORS = {"gray": 1, "rgb": 3, "bgr": 3, "yuv": 3}
LAYOUTS = ("NCHW", "NHWC")
FITS = ("resize", "letterbox")
KEYS = ("color", "layout", "height", "width", "fit", "box", "view", "scale", "mean", "std", "output")
OUTPUT_KEYS = ("name", "unit", "label")
_CONVERT = {"rgb": cv2.COLOR_BGR2RGB, "yuv": cv2.COLOR_BGR2YUV}
SPEC_HELP = ("the model's input convention, over its ONNX metadata and its sidecar file MODEL.json: a .json file, "
             "or key=value pairs: color=gray|rgb|bgr|yuv, layout=NCHW|NHWC, fit=resize|letterbox, "
             "box=x0/y0/x1/y1 (fractions of the frame), scale=1/127.5, mean=M or M1/M2/M3, std=S or S1/S2/S3 "
             "(x = (pixel*scale - mean)/std), size=HxW (symbolic inputs), output_name=, output_unit=deg, "
             "output_label= (docs/byom.md)")


@dataclass(frozen=True)
class InputSpec:
    """What a network expects. `box` (x0, y0, x1, y1) is a crop of the frame in fractions of its width and
    height, taken before the fit; `view` names one of the project's road views (svf, hvf), which replace box
    and fit. `batch` is the graph's fixed batch size (None: any)."""

    height: int
    width: int
    color: str = "gray"
    layout: str = "NCHW"
    fit: str = "resize"
    box: tuple | None = None
    view: str = ""
    scale: float = 1.0 / 255.0
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    output: dict = field(default_factory=lambda: {"name": "", "unit": "", "label": "output"})
    batch: int | None = None
    origin: str = "assumed"  # where it came from: "metadata", "sidecar FILE", "options", "config", "assumed"

    def __post_init__(self):
        if self.color not in COLORS:
            raise ValueError(f"input spec: color must be one of {', '.join(COLORS)}, got {self.color!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"input spec: layout must be NCHW or NHWC, got {self.layout!r}")
        if self.fit not in FITS:
            raise ValueError(f"input spec: fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.view and self.view not in VIEWS:
            raise ValueError(f"input spec: view must be one of {', '.join(VIEWS)}, got {self.view!r}")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"input spec: box is (x0,y0,x1,y1) in fractions of the frame, 0 <= x0 < x1 <= 1, "
                                 f"got {self.box}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if len(v) not in (1, self.channels):
                raise ValueError(f"input spec: {key} needs 1 or {self.channels} values for {self.color}, got {len(v)}")
        if any(s == 0 for s in self.std) or self.scale == 0:
            raise ValueError("input spec: std and scale must not be 0")

    @property
    def channels(self) -> int:
        return COLORS[self.color]

    @property
    def input_shape(self) -> tuple:
        """(C,H,W): the map geometry VBP works on, whatever the layout."""
        return (self.channels, self.height, self.width)

    @property
    def tensor_shape(self) -> tuple:
        """The input tensor's shape without the batch, in the model's layout."""
        c, h, w = self.input_shape
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    @property
    def unit(self) -> str:
        return self.output.get("unit", "")

    def camera_view(self) -> View | None:
        """The project's road view this model reads (None for a box/fit spec)."""
        if not self.view:
            return None
        v = view_for(self.view, self.height)
        return v if v.width == self.width else None

    def to_dict(self) -> dict:
        """The JSON form stored in the ONNX metadata `vbp_rt.input` and in sidecar files."""
        d = {k: v for k, v in asdict(self).items() if k not in ("batch", "origin")}
        d.update(channels=self.channels, dtype="float32", mean=list(self.mean), std=list(self.std),
                 box=list(self.box) if self.box else None)
        v = self.camera_view()
        d["view"] = v.to_dict() if v is not None else ({"name": self.view} if self.view else None)
        return d

    def describe(self) -> str:
        """One line: what frames are turned into."""
        fit = f"road view {self.view}" if self.camera_view() else (
            (f"box {tuple(self.box)}, " if self.box else "whole frame, ") + ("resized" if self.fit == "resize"
                                                                               else "letterboxed"))
        norm = f"scale {self.scale:.6g}"
        if any(self.mean) or any(s != 1 for s in self.std):
            norm += f", mean {_short(self.mean)}, std {_short(self.std)}"
        return f"{self.color} {self.layout} {self.height}x{self.width}, {fit}, {norm}"

    # ----- frames -> tensors -----

    def view_image(self, frame: np.ndarray) -> np.ndarray:
        """A camera frame (BGR or gray uint8, any size) -> the fitted uint8 image (H,W) gray or (H,W,3) BGR,
        as it is shown under the mask."""
        if frame is None or frame.size == 0:
            raise ValueError("empty frame")
        view = self.camera_view()
        if view is not None:
            return model_view(frame, view, self.height, self.width, color=self.channels == 3)
        if self.box is not None:
            h, w = frame.shape[:2]
            x0, y0, x1, y1 = self.box
            frame = frame[round(y0 * h):max(round(y1 * h), round(y0 * h) + 1),
                          round(x0 * w):max(round(x1 * w), round(x0 * w) + 1)]
        return model_view(frame, None, self.height, self.width, color=self.channels == 3,
                          letterbox_fit=self.fit == "letterbox")

    def to_tensor(self, images: np.ndarray) -> np.ndarray:
        """uint8 view images (N,H,W) gray or (N,H,W,3) BGR -> float32 input in the model's layout and scale."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 view images, got dtype {images.dtype}")
        if images.ndim == 2 or (images.ndim == 3 and self.channels == 3 and images.shape[-1] == 3):
            images = images[None]
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim == 3 and self.channels == 3:  # gray frames (e.g. a drive store) for a colour model
            images = np.stack([cv2.cvtColor(i, cv2.COLOR_GRAY2BGR) for i in images])
        if images.ndim == 4 and self.channels == 1:
            images = np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2GRAY) for i in images])
        want = (self.height, self.width) + ((3,) if self.channels == 3 else ())
        if images.shape[1:] != want:
            raise ValueError(f"expected view images of {self.height}x{self.width} "
                             f"({'BGR' if self.channels == 3 else 'gray'}), got shape {images.shape}")
        if self.color in _CONVERT:
            images = np.stack([cv2.cvtColor(i, _CONVERT[self.color]) for i in images])
        x = images.astype(np.float32) * np.float32(self.scale)
        if self.channels == 1:
            x = x[..., None]
        if any(self.mean) or any(v != 1 for v in self.std):
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)  # (N,H,W,C)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)


def from_config(cfg, origin: str = "config") -> InputSpec:
    """The spec of a vbp-rt network (NetConfig): gray (or BGR) frames through its road view, times its scale;
    a single output is the steering wheel angle in degrees."""
    steering = cfg.outputs == 1
    view = cfg.view if cfg.view in VIEWS and view_for(cfg.view, cfg.height).width == cfg.width else ""
    return InputSpec(cfg.height, cfg.width, color="gray" if cfg.in_channels == 1 else "bgr", view=view,
                     scale=cfg.input_scale, origin=origin,
                     output={"name": "prediction", "unit": "deg" if steering else "",
                             "label": "steering angle" if steering else "output"})


def announcement(spec: InputSpec, model) -> list:
    """What a command says once about the spec it uses: where it came from (or that it was assumed) and a
    fixed batch run frame by frame."""
    if spec.origin == "assumed":
        lines = [f"no input spec for {model} (ONNX metadata, {sidecar_path(model).name} or --input-spec): "
                 f"assuming {spec.describe()}"]
    else:
        lines = [f"input {spec.describe()} (from {spec.origin})"]
    if spec.batch is not None:
        lines.append(f"the model has a fixed batch of {spec.batch}: frames run {spec.batch} at a time")
    return lines


def announce(spec: InputSpec, model, prog: str) -> None:
    """Print `announcement` to stderr, each line prefixed with the command's name."""
    for line in announcement(spec, model):
        print(f"{prog}: {line}", file=sys.stderr)


def _short(values) -> str:
    return "/".join(f"{v:.4g}" for v in values)


def _number(text) -> float:
    """A number or a fraction such as 1/127.5."""
    if isinstance(text, str) and "/" in text:
        top, bottom = text.split("/")
        return float(top) / float(bottom)
    return float(text)


def _values(value) -> tuple:
    """A number, a list, or text: '1/127.5' is one fraction, '0.485/0.456/0.406' three values."""
    if isinstance(value, (int, float)):
        return (float(value),)
    if isinstance(value, str):
        return (_number(value),) if _is_fraction(value) else tuple(_number(v) for v in value.split("/"))
    return tuple(_number(v) for v in value)


def parse_entries(entries: dict, where: str) -> dict:
    """Validated spec keys from a dict (metadata, sidecar JSON or options)."""
    unknown = sorted(set(entries) - set(KEYS) - {"channels", "dtype", "output_name", "output_unit",
                                                   "output_label", "size"})
    if unknown:
        raise ValueError(f"input spec from {where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    out: dict = {}
    try:
        for key, value in entries.items():
            if value is None or key in ("dtype", "channels"):
                continue
            if key == "color":
                out["color"] = str(value).lower()
            elif key == "layout":
                out["layout"] = str(value).upper()
            elif key == "fit":
                out["fit"] = str(value).lower()
            elif key in ("height", "width"):
                out[key] = int(value)
            elif key == "size":
                h, w = (int(v) for v in str(value).lower().split("x"))
                out.update(height=h, width=w)
            elif key == "scale":
                out["scale"] = _number(value)
            elif key in ("mean", "std"):
                out[key] = _values(value)
            elif key == "box":
                box = tuple(float(v) for v in (value.split("/") if isinstance(value, str) else value))
                if len(box) != 4:
                    raise ValueError("box needs four values x0/y0/x1/y1")
                out["box"] = box
            elif key == "view":
                out["view"] = value.get("name", "") if isinstance(value, dict) else str(value)
            elif key == "output":
                if not isinstance(value, dict) or set(value) - set(OUTPUT_KEYS):
                    raise ValueError(f"output is a dict with keys {', '.join(OUTPUT_KEYS)}")
                out["output"] = {k: str(v) for k, v in value.items()}
            else:  # output_name, output_unit, output_label
                out.setdefault("output", {})[key.split("_", 1)[1]] = str(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"input spec from {where}: {e}") from None
    return out


def _is_fraction(text: str) -> bool:
    """'1/127.5' is a fraction; '0.485/0.456/0.406' is a list of three."""
    return text.count("/") == 1 and _looks_integer(text.split("/")[0])


def _looks_integer(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def parse_options(text: str | None) -> dict:
    """--input-spec: a JSON file, or comma-separated key=value pairs (lists with '/': mean=0.485/0.456/0.406;
    fractions: scale=1/127.5; size=66x200; box=0/0.35/1/0.9; output_unit=deg)."""
    if not text:
        return {}
    path = Path(text)
    if path.suffix.lower() == ".json":
        return parse_entries(_read_json(path), str(path))
    entries = {}
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"--input-spec: expected key=value pairs or a .json file, got {item!r}")
        key, value = item.split("=", 1)
        entries[key.strip().replace("-", "_")] = value.strip()
    return parse_entries(entries, "--input-spec")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"input spec file {path} does not exist") from None
    except ValueError as e:
        raise ValueError(f"input spec file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"input spec file {path}: expected a JSON object")
    return data


def sidecar_path(model_path) -> Path:
    """MODEL.onnx -> MODEL.onnx.json: the spec file looked for beside a model."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def resolve(base: InputSpec, metadata: dict | None = None, path=None, options: str | dict | None = None) -> InputSpec:
    """`base` (the graph's size, or a vbp-rt config) updated by the metadata, then the sidecar beside `path`,
    then the options. `origin` names the sources used, or "assumed" when none gave anything."""
    layers, origins = [], []
    if metadata:
        layers.append(parse_entries(metadata, "the model's metadata"))
        origins.append("metadata")
    side = sidecar_path(path) if path is not None else None
    if side is not None and side.is_file():
        layers.append(parse_entries(_read_json(side), str(side)))
        origins.append(f"sidecar {side.name}")
    opts = parse_options(options) if isinstance(options, (str, type(None))) else parse_entries(options, "options")
    if opts:
        layers.append(opts)
        origins.append("options")
    merged: dict = {}
    for layer in layers:
        output = {**merged.get("output", {}), **layer.get("output", {})}
        merged.update(layer)
        if output:
            merged["output"] = output
    if "output" in merged:
        merged["output"] = {**base.output, **merged["output"]}
    if merged.get("view") and ("box" in merged or merged.get("fit") == "letterbox"):
        merged.pop("view")
    if origins:
        return replace(base, **merged, origin=" + ".join(origins))
    return base
