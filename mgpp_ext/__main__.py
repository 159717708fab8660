"""Command line: ``python -m mgpp_ext report PATH`` prints a checkpoint's
sparsity; ``python -m mgpp_ext oneshot ...`` prunes a causal LM in one shot
(``mgpp_ext.oneshot.cli``)."""
from __future__ import annotations

import argparse
import sys


def _load_state(path):
    import torch

    if path.endswith(".safetensors"):
        from .export import read_sparse

        return read_sparse(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: not a state dict (got {type(obj).__name__})")
    return obj


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mgpp_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="per-tensor sparsity of a saved checkpoint")
    rep.add_argument("path", help=".safetensors (dense or save_sparse layout) or torch.save'd state dict")
    rep.add_argument("--all", action="store_true", help="include 1-d tensors (biases, LayerNorm)")
    from .oneshot import cli as oneshot_cli

    oneshot_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "oneshot":
        return oneshot_cli.run(args)

    import os

    if not os.path.exists(args.path):
        parser.error(f"no such file: {args.path}")
    from .export import sparsity_report

    sparsity_report(_load_state(args.path), patterns=[r".*"] if args.all else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
