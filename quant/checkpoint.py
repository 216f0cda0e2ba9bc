"""Checkpoints: a weights-only state_dict (`<stem>.pt`) beside a JSON config (`<stem>.json`).

The JSON says how to rebuild the model (registry name and arguments), the class names,
the operating threshold and the metrics; the .pt holds tensors only and is loaded with
`torch.load(weights_only=True)`, so a checkpoint can never run code.
"""
from __future__ import annotations

import errno
import json
import pickle
import re
from pathlib import Path

import torch

from core.atomic import atomic_path, write_json
from core.errors import UserError


# what torch.save's stream writer says when the OS refuses a write (a full disk or quota)
_WRITE_FAILED = ("file write failed", "unexpected pos", "PytorchStreamWriter failed")


def save_tensors(obj, tmp: Path, target: Path) -> None:
    """torch.save, with a failed write (torch raises RuntimeError) reported as the OSError it is,
    so core.atomic names the full disk instead of a traceback."""
    try:
        torch.save(obj, tmp)
    except RuntimeError as e:
        if any(s in str(e) for s in _WRITE_FAILED):
            raise OSError(errno.ENOSPC, "No space left on device (torch.save could not write)", str(target)) from None
        raise


def save_checkpoint(stem: str | Path, model: torch.nn.Module, meta: dict) -> Path:
    """meta must hold "model": the create_model keyword arguments."""
    stem = Path(stem)
    if "model" not in meta:
        raise ValueError("checkpoint meta needs the 'model' create_model arguments")
    with atomic_path(stem.with_suffix(".pt")) as tmp:
        save_tensors({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp, stem.with_suffix(".pt"))
    write_json(stem.with_suffix(".json"), meta)
    return stem


def read_meta(stem: str | Path) -> dict:
    path = Path(stem).with_suffix(".json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"checkpoint config {path} not found: train first (make train)") from None
    except ValueError as e:
        raise UserError(f"checkpoint config {path} is not valid JSON ({e})") from None


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: train first (make train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"\bGLOBAL ([\w.]+)", str(e))  # torch names the class/function it refused to load
        if found:
            raise UserError(f"{path} is not a weights-only checkpoint: it pickles Python objects ({found.group(1)}), "
                            "which are never unpickled here; re-save it as a plain state_dict of tensors") from None
        raise UserError(f"{path} is not a torch checkpoint (unreadable pickle data): retrain, or restore the file") from None
    except Exception as e:  # whatever torch.load makes of a truncated or foreign file (EOFError, OSError, KeyError, ...)
        raise UserError(f"{path} is not a readable torch checkpoint ({_first_line(e)}): it may be truncated; "
                        "retrain, or restore the file") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state_dict of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{path} holds NaN/inf weights (first: {bad[0]}); retrain or use an earlier checkpoint")
    return state


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for a paragraph)."""
    lines = str(e).strip().splitlines()
    return lines[0].split(". ")[0][:160] if lines else type(e).__name__


def _mismatch(e: RuntimeError) -> str:
    """torch's load_state_dict report ("Missing key(s) ...", "size mismatch for ...") in brief."""
    parts, sizes = [], []
    for line in str(e).split("\n\t")[1:]:
        line = line.strip()
        if line.startswith(("Missing key(s)", "Unexpected key(s)")):
            keys = re.findall(r'"([^"]+)"', line)
            parts.append(f"{len(keys)} {line.split(' ')[0].lower()} keys, e.g. {keys[0] if keys else '?'}")
        elif line.startswith("size mismatch for "):
            sizes.append(line)
    if sizes:
        m = re.match(r"size mismatch for (\S+): copying a param with shape torch.Size\((\[.*?\])\) from checkpoint, "
                     r"the shape in current model is torch.Size\((\[.*?\])\)", sizes[0])
        first = f"{m.group(1)} is {m.group(2)} in the checkpoint, {m.group(3)} in the model" if m else sizes[0][:120]
        parts.append(f"{len(sizes)} size mismatches, e.g. {first}")
    return "; ".join(parts) or _first_line(e)


def load_into(model: torch.nn.Module, state: dict, source: str) -> torch.nn.Module:
    # strict loading through the model's own hooks (Brevitas creates some quantizer
    # parameters, e.g. statistics-initialised scales, only when they are loaded)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{source} does not fit this architecture ({_mismatch(e)}); "
                        "it was saved for another model, width or class count") from None
    return model.eval()


def load_checkpoint(stem: str | Path):
    """-> (model in eval mode, meta)."""
    from quant.models import create_model

    stem = Path(stem)
    meta = read_meta(stem)
    args = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(args, dict) or "name" not in args:
        raise UserError(f"checkpoint config {stem.with_suffix('.json')} has no \"model\" section (create_model arguments): "
                        "it was not written by qdeploy; retrain")
    try:
        model = create_model(**args)
    except TypeError as e:
        raise UserError(f"checkpoint config {stem.with_suffix('.json')}: \"model\" holds arguments create_model "
                        f"does not take ({e}): retrain") from None
    return load_into(model, load_state(stem.with_suffix(".pt")), str(stem.with_suffix(".pt"))), meta
