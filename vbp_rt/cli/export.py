"""`vbp export MODEL --out MODEL.onnx`: ONNX files with the maps exposed, VBP inside the graph, LRP inside the graph."""
from __future__ import annotations

import shutil
from pathlib import Path

from vbp_rt import onnx_graph, onnx_io
from vbp_rt.files import partial_path, publish, refuse_existing, warn_stale
from vbp_rt.graph import find_torch_chain
from vbp_rt.input_spec import SPEC_HELP, announce
from vbp_rt.model_config import resolve_model_path
from vbp_rt.models import load_model
from vbp_rt.onnx_meta import is_onnx
from vbp_rt.onnx_model import export_foreign, onnx_spec


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write ONNX models: maps exposed, VBP in the graph, LRP in the graph",
        description="Export a model to ONNX (dynamic batch; input layout, size, scale and camera view in the "
                    "metadata). OUT.onnx has the prediction and every post-ReLU conv map as outputs; "
                    "OUT.vbp.onnx computes the VisualBackProp mask inside the graph; OUT.lrp.onnx computes "
                    "epsilon-LRP inside the graph. MODEL may also be an ONNX ReLU CNN from elsewhere: its "
                    "conv/ReLU maps are found by graph analysis (maps and vbp variants; lrp through its torch "
                    "conversion when asked), its input spec is written into the metadata.",
    )
    p.add_argument("model", help="shipped model name, checkpoint path, or an .onnx file")
    p.add_argument("--out", required=True, help="output path MODEL.onnx; variants go to MODEL.vbp.onnx, MODEL.lrp.onnx")
    p.add_argument("--overwrite", action="store_true", help="replace model files that already exist (default: refuse)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of maps,vbp,lrp (default: all three; maps,vbp for an .onnx input)")
    p.add_argument("--eps", type=float, default=100.0, help="epsilon of the LRP variant (default 100, as in the paper)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset of the exported network (default 17; an .onnx input keeps its own unless given)")
    p.add_argument("--input-shape", help="C,H,W for an .onnx input whose height/width are symbolic")
    p.add_argument("--input-spec", help=SPEC_HELP)
    p.set_defaults(func=run)


def _parse_shape(text):
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"--input-shape must be three positive integers C,H,W, got {text!r}")
    return shape


def run(args) -> int:
    """Write the variants into a hidden folder beside OUT, then rename them into place together: a kill
    leaves the earlier files as they were (the next run names the folder it left)."""
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the .onnx file to write")
    refuse_existing(onnx_io.variant_paths(out).values(), args.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    warn_stale(out, "vbp export")
    stage = partial_path(out)
    stage.mkdir()
    try:
        staged = _export(args, stage / out.name)
        written = {variant: publish(path, out.parent / Path(path).name) for variant, path in staged.items()}
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for variant, path in written.items():
        print(f"  {variant:4s} -> {path} ({Path(path).stat().st_size / 1e6:.1f} MB)")
    return 0


def _export(args, out) -> dict:
    """The chosen variants written next to `out`; returns {variant: path}."""
    shape = _parse_shape(args.input_shape)
    source = resolve_model_path(args.model)
    foreign = is_onnx(source)
    default = ("maps", "vbp") if foreign else onnx_io.VARIANTS
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else default
    unknown = [v for v in variants if v not in onnx_io.VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(onnx_io.VARIANTS)}")
    if foreign:
        model = onnx_graph.load(source)
        spec = onnx_spec(model, source, args.input_spec, shape)
        announce(spec, source, "vbp export")
        written, chain, notes = export_foreign(model, out, variants, spec, args.eps, args.opset, shape)
        for note in notes:
            print(f"vbp export: {note}")
    else:
        if args.input_spec:
            raise ValueError("--input-spec is for an .onnx input; a vbp-rt checkpoint carries its own")
        model = load_model(source)
        chain = None
        written = onnx_io.export(model, out, variants, eps=args.eps, input_shape=shape,
                                 opset=args.opset or onnx_io.DEFAULT_OPSET)
    if chain is None:
        chain = find_torch_chain(model, model.config.input_shape)
    print(f"vbp export: {len(chain.links)} post-ReLU conv maps ({', '.join(chain.names)})")
    return written
