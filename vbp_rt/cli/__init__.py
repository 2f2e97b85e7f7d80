"""The `vbp` command: thin dispatch to the subcommands of each front end.

Only the chosen subcommand's module is imported (each exposes `add_parser(subparsers)`), so `vbp view` does not
pay for the trainer's or the evaluation's imports, and `vbp --help` for none of them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from vbp_rt.extras import MissingExtra

# name -> (module exposing add_parser(subparsers), one-line help for `vbp --help`)
SUBCOMMANDS = {
    "explain": ("vbp_rt.cli.explain", "write predictions and masks for images, folders, videos or a data store"),
    "export": ("vbp_rt.cli.export", "write ONNX models: maps exposed, VBP in the graph, LRP in the graph"),
    "data": ("vbp_rt.data.cli", "make HDF5 driving stores (synthetic drives, Udacity ingest)"),
    "eval": ("vbp_rt.evaluation.cli", "measure the faithfulness of every attribution method (Markdown/CSV/PNG report)"),
    "train": ("vbp_rt.trainer.cli", "train NetSVF/NetHVF on an HDF5 store (or resume a run)"),
    "train-eval": ("vbp_rt.trainer.eval_cli", "steering accuracy of a model on several drives: per-drive table and plot"),
    "view": ("vbp_rt.viewer.cli", "watch what a driving network looks at: video, camera, drive or image folder, live"),
    "audit": ("vbp_rt.audit.cli", "find the frames where a network looks at the wrong thing, across hours of driving"),
    "bench": ("vbp_rt.bench.cli", "latency of forward, VBP, LRP and other libraries' methods; the viewer's frame rate"),
    "doctor": ("vbp_rt.cli.doctor", "why CUDA is (not) used: onnxruntime/torch builds, providers, causes; --gpu: GPU check"),
}


def _chosen(argv) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if it is one of ours."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser, with the full options of the subcommand `argv` names (all of them when `argv` is None)."""
    parser = argparse.ArgumentParser(
        prog="vbp",
        description="vbp-rt: see which pixels a driving CNN looks at (VisualBackProp, LRP and friends).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = _chosen(argv) if argv is not None else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every command finishes or removes what it was writing."""


def _silence_stdout() -> None:
    """Point stdout at the null device so that the interpreter's last flush does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # not a real file (captured output)
        pass


def _interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind `error`, if its chain of causes holds one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _stopped(command: str, stop: KeyboardInterrupt) -> int:
    terminated = isinstance(stop, Terminated)
    print(f"vbp {command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    handled = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    received: list[Terminated] = []  # the SIGTERM this run received, if any

    def terminate(signum, frame):
        received.append(Terminated())
        raise received[-1]

    previous = signal.signal(signal.SIGTERM, terminate) if handled else None
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`vbp data screen ... | head`): stop quietly, as shell tools do
        _silence_stdout()
        return 141  # 128 + SIGPIPE
    except (ValueError, OSError, MissingExtra) as e:
        if received:  # what a SIGTERM that landed inside C code left behind
            return _stopped(args.command, received[0])
        print(f"vbp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _stopped(args.command, e)
    except Exception as e:  # an interruption inside C code (numpy's import) comes back wrapped in another error,
        # or replaced by one that no longer holds it (PyCapsule_Import): a SIGTERM received before is the cause
        stop = _interruption(e) or (received[0] if received else None)
        if stop is None:
            raise
        return _stopped(args.command, stop)
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)
