"""`qdeploy` command line: a thin layer over the library.

    qdeploy check  [--recipe R] [--set key=value ...]   (validate recipe and dataset, write nothing)
    qdeploy train  [--recipe R] [--set key=value ...]
    qdeploy export [--recipe R]
    qdeploy build  --target fpga|npu|gpu [--recipe R] [--model their.onnx --samples DIR]
    qdeploy parity [--recipe R]
    qdeploy bench  [--recipe R]
    qdeploy report [--recipe R]
    qdeploy sweep  [--recipe R] [--seeds 0 1 2] [--isa native|avx2] [--jobs N]   (mean and spread over seeds)
    qdeploy predict --target fpga|npu|gpu|qat|float [--recipe R] IMAGES...|DIR [--out DIR]

User mistakes print one line and exit non-zero; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import threading
from pathlib import Path

from core.errors import UserError
from core.layout import TOOL_LOG
from core.targets import NAMES
from qdeploy.build_dir import build_lock, check_build_dir

_MACHINE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ELOOP, errno.ENAMETOOLONG,
                   errno.EIO)


def _parse_set(items: list[str]) -> dict:
    from qdeploy.recipe_load import parse_override

    return dict(parse_override(item) for item in items)


class _Parser(argparse.ArgumentParser):
    """Usage errors end like every other error: one last line `qdeploy: error: ...`, exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"qdeploy: error: {one_line(message)}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qdeploy", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--recipe", help="YAML recipe (default: the embedded default job)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    common.add_argument("--build-dir", default="build", help="root of all artifacts (default: build)")
    common.add_argument("--force", action="store_true", help="rerun the last stage even when up to date")
    sub.add_parser("check", parents=[common], help="validate the recipe and the dataset files; writes nothing")
    sub.add_parser("train", parents=[common], help="float pre-training then QAT; prints both metrics")
    sub.add_parser("export", parents=[common], help="export the QAT model to QONNX and check it")
    b = sub.add_parser("build", parents=[common], help="build a target artifact")
    b.add_argument("--target", required=True, help="fpga, npu or gpu")
    b.add_argument("--model", help="bring your own QONNX model (fpga only)")
    b.add_argument("--samples", help="folder of sample images / .npy arrays (or one .npy file) for --model parity")
    b.add_argument("--resize", action="store_true", help="resize --samples images to the model's input size")
    sw = sub.add_parser("sweep", parents=[common], help="train once per seed; mean, sd and worst seed of every metric")
    sw.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="N", help="seeds (default: 0 1 2)")
    sw.add_argument("--isa", default="native", help="native, or avx2: compute like an AVX2-only CPU (core.machine.ISA_CAPS)")
    sw.add_argument("--jobs", type=int, default=1, help="seeds trained side by side (each uses train.threads)")
    sub.add_parser("parity", parents=[common], help="parity report over every built target")
    sub.add_parser("bench", parents=[common], help="throughput of every runtime present")
    sub.add_parser("report", parents=[common], help="render the report from the last parity run")
    pr = sub.add_parser("predict", parents=[common], help="run a deployed model on images: predictions.csv + overlays")
    pr.add_argument("--target", required=True, help="fpga, npu, gpu (the deployed twin, or the device where present), "
                                                   "qat or float")
    pr.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders of them (searched recursively)")
    pr.add_argument("--out", help="output folder (default: <build-dir>/<recipe>/predict/<target>)")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from qdeploy.recipe import load_recipe
    from qdeploy.steps import Context

    recipe = load_recipe(args.recipe, _parse_set(args.set))
    root = Path(args.build_dir)
    _state["build_root"] = root
    ctx = Context(recipe=recipe, build_dir=check_build_dir(root, recipe.name))
    if args.command == "check":
        from qdeploy.check import check

        check(ctx)
        return 0
    with build_lock(root):
        _command(args, ctx)
    return 0


def _command(args, ctx) -> None:
    if args.command == "train" and _launched_by_torchrun():
        _train_distributed(ctx, args.force)
    elif args.command in ("train", "export"):
        from qdeploy.stages import run_plan

        run_plan(ctx, args.command, force=args.force)
    elif args.command == "sweep":
        from qdeploy.sweep import run_sweep

        run_sweep(ctx, args.seeds, args.isa, args.jobs, args.recipe, args.set, force=args.force)
    elif args.command == "build":
        if args.target not in NAMES:
            raise UserError(f"unknown target {args.target!r}; valid: {', '.join(NAMES)}")
        if args.model:
            from qdeploy.byom import build_own_model

            build_own_model(ctx, args.target, Path(args.model), args.samples, args.resize)
        else:
            from qdeploy.stages import run_plan

            run_plan(ctx, args.target, force=args.force)
    else:
        _run_harness(ctx, args)
    return 0


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _train_distributed(ctx, force: bool) -> None:
    """`torchrun --nproc_per_node N -m qdeploy train`: every rank trains (DDP, quant.distributed);
    rank 0 writes the artifacts, the other ranks write into a scratch folder that is removed.
    Whether the stage is up to date is rank 0's call, so every rank runs the same steps."""
    import shutil
    import tempfile

    import torch.distributed as dist

    from core.console import console
    from qdeploy.stages import run_plan, step_digests
    from qdeploy.steps import Context, stage_is_current
    from quant import distributed

    distributed.init()
    scratch = None
    try:
        current = [not force and stage_is_current(ctx.stage_dir("train"), step_digests(ctx.recipe, "train"))]
        dist.broadcast_object_list(current, src=0)
        if not distributed.is_main():
            console.quiet = True
            scratch = Path(tempfile.mkdtemp(prefix=f"qdeploy-rank{distributed.rank()}-"))
            ctx = Context(recipe=ctx.recipe, build_dir=scratch / ctx.recipe.name)
        if current[0]:
            console.print(f"[dim]train: up to date ({ctx.stage_dir('train')})[/dim]")
            return
        console.print(f"train: {distributed.world_size()} processes, DistributedDataParallel over "
                      f"{dist.get_backend()}; rank 0 writes {ctx.build_dir}")
        run_plan(ctx, "train", force=True)
    finally:
        distributed.shutdown()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run_harness(ctx, args) -> None:
    """parity, report, bench, predict: the tools' own output (OpenVINO, NNCF, FINN) goes to
    tool.log in the command's folder, like a build step's."""
    from core.console import console
    from core.tool_output import tool_output
    from qdeploy.stages.harness import reference_inputs

    if args.command == "predict":
        from reference.predict import KEYS, list_images

        if args.target not in KEYS:
            raise UserError(f"unknown --target {args.target!r}; valid: {', '.join(KEYS)}")
        list_images(args.images)  # a missing file or a folder without images: said before anything runs
    inputs = reference_inputs(ctx)
    out = Path(args.out) if getattr(args, "out", None) else None
    folder = {"parity": ctx.layout.report_dir, "report": ctx.layout.report_dir, "bench": ctx.layout.bench_dir,
              "predict": out or ctx.layout.predict_dir(getattr(args, "target", ""))}[args.command]
    log = folder / TOOL_LOG
    console.print(f"[dim]{args.command}: tool output in {log}[/dim]")
    with tool_output(log, args.command):
        if args.command in ("parity", "report"):
            from reference.parity import run_parity

            run_parity(inputs, render_only=args.command == "report")
        elif args.command == "bench":
            from reference.bench import run_bench

            run_bench(inputs)
        elif args.command == "predict":
            from reference.predict import run_predict

            run_predict(inputs, args.target, args.images, out)
    return 0


_state: dict = {}  # what the error handler needs to blame the right input


def one_line(text: str) -> str:
    """`text` with every control character escaped (a file name with a newline stays on the line)."""
    return "".join(repr(c)[1:-1] if (not c.isprintable() and c != " ") else c for c in text)


def _os_error(e: OSError) -> str:
    """An OSError of the machine, blamed on what it concerns: the build dir, or an input."""
    name = e.filename or "output"
    root = _state.get("build_root")
    inside = False
    if e.filename and root is not None:
        try:
            inside = Path(os.path.abspath(e.filename)).is_relative_to(Path(os.path.abspath(root)))
        except (OSError, ValueError):
            inside = False
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"free disk space on the drive of --build-dir {root}" if inside or root is None else "free disk space"
        return f"{e.strerror}: {name}: {where} or choose another --build-dir"
    if inside or e.filename is None:
        return f"{e.strerror}: {name}: fix its permissions or choose another --build-dir"
    return f"{e.strerror}: {name}: an input of this run (not under --build-dir {root}): check the path and its permissions"


class _Terminated(BaseException):
    """SIGTERM (CI cancel, `timeout`, `docker stop`) or SIGHUP, raised in the main thread."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise _Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    """SIGTERM and SIGHUP end a build like Ctrl-C: the step in progress is abandoned (its
    outputs are written to temporary paths and renamed only when complete), finished stages
    and steps are kept, one line is printed, exit 128 + signal."""
    import signal

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        return run(argv)
    except _Terminated as e:
        name = signal.Signals(e.signum).name
        print(f"qdeploy: stopped by {name}; finished stages are kept, rerun to resume", file=sys.stderr)
        return 128 + e.signum
    except UserError as e:
        print(f"qdeploy: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("qdeploy: interrupted; finished stages are kept, rerun to resume", file=sys.stderr)
        return 130
    except OSError as e:  # the machine, not a bug: no permission, read-only or full disk
        if e.errno not in _MACHINE_ERRNOS:
            raise
        print(f"qdeploy: error: {one_line(_os_error(e))}", file=sys.stderr)
        return UserError.exit_code
    finally:
        _state.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
