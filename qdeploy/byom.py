"""Bring your own model: a user's QONNX export (from their own Brevitas model) through the
same FPGA flow, with the QONNX graph itself, executed by qonnx, as the parity reference.

    qdeploy build --target fpga --model their.qonnx.onnx --samples images/

Samples are images (grayscale or RGB) or .npy arrays of any channel count, as uint8 at the
model's input size (qdeploy.samples; resized only with --resize: otherwise the model sees
exactly what the hardware will). The model takes pixels / 255. Artifacts go to
build/<recipe>/fpga-byom/<model>/; the summary compares our folding with FINN's SetFolding
run on the same unfolded model.
"""
from __future__ import annotations

from pathlib import Path

from core.atomic import write_json
from core.console import console
from core.errors import UserError
from qdeploy.steps import Context


def input_shape(model, path: Path) -> tuple[int, int, int]:
    """(C, H, W) of the model's one image input [N, C, H, W] with fixed sizes; UserError otherwise."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise UserError(f"--model {path} has no graph input: export it with its image input [1, C, H, W]")
    if len(inputs) > 1:
        raise UserError(f"--model {path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs[:4])}): "
                        "qdeploy feeds one image input [1, C, H, W]")
    t = inputs[0].type.tensor_type
    if not t.HasField("shape"):
        raise UserError(f"--model {path}: input {inputs[0].name!r} has no shape: export it with a fixed [1, C, H, W] shape")
    dims = [d.dim_param if d.HasField("dim_param") or not d.HasField("dim_value") else d.dim_value for d in t.shape.dim]
    shown = "[" + ", ".join(str(d) if d != "" else "?" for d in dims) + "]"
    if len(dims) != 4:
        raise UserError(f"--model {path}: input {inputs[0].name!r} is {shown}, rank {len(dims)}; qdeploy needs an "
                        "image input [N, C, H, W] (rank 4)")
    symbolic = [d for d in dims[1:] if not isinstance(d, int) or d <= 0]
    if symbolic:
        raise UserError(f"--model {path}: input {inputs[0].name!r} is {shown} with symbolic or unknown sizes: "
                        "export it with fixed channel, height and width (e.g. [1, 1, 64, 64])")
    return dims[1], dims[2], dims[3]


def build_own_model(ctx: Context, target: str, model_path: Path, samples: str | None, resize: bool = False) -> None:
    from compilers.finn.flow import load_qonnx, lower
    from qdeploy.samples import read_samples
    from qdeploy.stages.fpga import folding_plugin, warn_shortfall
    from targets.fpga_parts import get_part

    if target != "fpga":
        raise UserError(f"--model (bring your own QONNX) is supported for --target fpga; for {target}, "
                        "train through a recipe")
    if model_path.is_dir():
        raise UserError(f"--model {model_path} is a directory: give the .onnx file")
    if not model_path.is_file():
        raise UserError(f"--model {model_path} not found")
    if samples is None:
        raise UserError("--model needs --samples DIR: a folder of sample images for the parity check")
    r = ctx.recipe.fpga
    part = get_part(r.part)
    model = load_qonnx(model_path)
    shape = input_shape(model, model_path)
    pixels = read_samples(Path(samples), shape, resize=resize)
    out = ctx.build_dir / "fpga-byom" / model_path.name.split(".")[0]
    result = lower(model_path, out, part, r.clock_mhz, r.target_fps, r.budget, samples_uint8=pixels,
                   reference_logits=None, folding=folding_plugin(r), thresholds=r.thresholds, replicas=r.replicas,
                   log=lambda msg: console.print(f"  {msg}"))
    write_json(out / "byom_summary.json", result.to_dict())
    worst = [p for p in result.parity if not p.exact]
    warn_shortfall(result.notes["folding"].get("plan") or {})
    sf = result.notes["folding"]["comparison"]["setfolding"]
    console.print(f"  FINN's own folding (SetFolding) at that target: {sf['est_fps']:,.0f} fps, {sf['LUT']:,.0f} LUT, "
                  f"{sf['BRAM_18K']:,.0f} BRAM_18K (estimates)")
    console.print(f"{model_path.name}: estimated {result.est_fps:,.0f} fps on {part.name} (estimate); parity vs the "
                  f"QONNX graph on {len(pixels)} samples: "
                  + ("bit-exact at every stage" if not worst else f"{worst[0].stage} differs"))
    if worst:
        from core.errors import GateFailed

        fd = worst[0].first_divergence or {}
        raise GateFailed(f"parity gate failed: fpga ({model_path.name}) stage {worst[0].stage} differs from the "
                         f"QONNX graph; first divergent node: {fd.get('node')}")
