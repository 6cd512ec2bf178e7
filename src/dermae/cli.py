"""Command-line interface: argument parsing and dispatch only; the work lives in the stages."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dermae.config import Config, ConfigError, load_config


def _lazy(target: str) -> Callable[..., Any]:
    """'module:function' imported on use, so `dermae --help` stays fast."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1-65535 (e.g. 8000)")
    return port


def _file_on_path(path: Path) -> Path | None:
    """The first existing non-folder on the way to `path` (excluding `path` itself)."""
    return next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)


def _out_path(text: str) -> Path:
    """An output path that can be created: no file in the way, no over-long name."""
    path = Path(text)
    blocker = _file_on_path(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{blocker} is a file, so {path} cannot be created")
    if any(len(part.encode()) > 255 for part in path.parts):
        raise argparse.ArgumentTypeError(f"a name in {text[:60]}... is over 255 bytes")
    return path


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (configs/demo.yaml, ...)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set baseline.train.lr=1e-3 (repeatable)",
    )
    p.add_argument("--run-dir", type=_out_path, help="override run_dir")
    p.add_argument("--no-resume", action="store_true", help="start training stages afresh")


def _load(args: argparse.Namespace) -> Config:
    overrides = list(args.set)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    threads, source = _lazy("dermae.engine.threads:apply_threads")(cfg.threads)
    print(f"dermae: {threads} torch thread(s) ({source})", file=sys.stderr)
    return cfg


# Stage commands taking (cfg, run_dir) -> Path.
STAGE_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("dermae.classify.baseline:train_baseline", "train the plain baseline classifier"),
    "pretrain": ("dermae.pretrain.train:pretrain", "MAE pre-training of the ViT teacher"),
    "finetune": ("dermae.classify.finetune:finetune", "fine-tune the teacher classifier"),
    "distill": ("dermae.distill.train:distill", "distil the teacher into the small student"),
    "ablate": ("dermae.evaluate.ablation:ablate", "the ablation: baseline vs simple fix vs DerMAE"),
    "report": ("dermae.evaluate.summary:build_report", "write report.html and report.md"),
}
SYNTH_COMMANDS: dict[str, tuple[str, str]] = {
    "train-vae": ("dermae.synth.vae:train_vae", "train the VAE on the real train split"),
    "train": ("dermae.synth.ldm:train_ldm", "train the class-conditioned latent UNet"),
    "sample": ("dermae.synth.stages:sample_stage", "generate images to balance the classes"),
    "evaluate": ("dermae.synth.stages:quality_stage", "FID/KID, fidelity, near-copies"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermae",
        description="DerMAE: synthesise -> MAE pre-train -> distil -> evaluate, for dermoscopy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the whole pipeline; done stages are skipped")
    _config_args(p)
    p.add_argument("--from", dest="from_stage", help="rerun from this stage on")
    p.add_argument("--until", dest="until_stage", help="stop after this stage")
    p.set_defaults(handler=_run)

    data = sub.add_parser("data", help="prepare or fetch a dataset").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    p = data.add_parser("prepare", help="ingest, split by lesion, cache images")
    _config_args(p)
    p.set_defaults(handler=_prepare)
    p = data.add_parser("fetch", help="download a public dataset (checksum, resume)")
    p.add_argument("name", choices=["ham10000"])
    p.add_argument("--to", required=True, type=Path)
    p.add_argument("--url", help="archive URL (default: the official release)")
    p.add_argument("--sha256", help="expected checksum of the archive")
    p.set_defaults(handler=_fetch)

    for name, (target, help_text) in STAGE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        _config_args(p)
        p.set_defaults(handler=_stage, target=target)

    synth = sub.add_parser("synth", help="latent-diffusion synthesis").add_subparsers(
        dest="synth_command", required=True, metavar="ACTION"
    )
    for name, (target, help_text) in SYNTH_COMMANDS.items():
        p = synth.add_parser(name, help=help_text)
        _config_args(p)
        p.set_defaults(handler=_stage, target=target)

    p = sub.add_parser("evaluate", help="metrics, CIs and plots for a classifier on a split or set")
    _config_args(p)
    p.add_argument("--model", type=Path, help="classifier folder (default: the run's student)")
    p.add_argument("--split", help="train | val | test (default: evaluate.split)")
    p.add_argument("--data", type=Path, help="an external labelled set in a supported layout")
    p.add_argument("--out", type=_out_path, help="output folder")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("export", help="ONNX (+ int8) export with parity checks and a model card")
    _config_args(p)
    p.add_argument("--model", type=Path, help="classifier folder (default: the run's student)")
    p.add_argument("--out", type=_out_path, help="export folder (default: <run_dir>/export)")
    p.set_defaults(handler=_export)

    p = sub.add_parser(
        "predict",
        help="class probabilities and malignant risk for images",
        description="Class probabilities and malignant risk for images.",
        epilog="exit status: 0 every input predicted; 1 some inputs failed (listed with their "
        "error), the others predicted; 2 nothing predicted (no inputs found, every input "
        "failed) or a usage error",
    )
    p.add_argument("inputs", nargs="+", help="images, folders, or CSV files of paths")
    p.add_argument("--model", required=True, type=Path, help="export folder or classifier folder")
    p.add_argument("--format", default="table", choices=["table", "json", "csv"])
    p.add_argument("--out", type=_out_path, help="write the result here")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("serve", help="web service and page for an exported model")
    p.add_argument("--model", required=True, type=Path, help="export folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument(
        "--docs",
        action="store_true",
        help="also serve /docs and /redoc (their scripts load from a CDN, so off by default)",
    )
    p.set_defaults(handler=_serve)

    p = sub.add_parser(
        "prune", help="free disk: drop the optimizer state of a run's finished trainings"
    )
    p.add_argument("run_dir", type=Path, help="a run folder (a config's run_dir)")
    p.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    p.set_defaults(handler=_prune)

    p = sub.add_parser(
        "calibrate", help="re-choose an export's malignant threshold on a labelled site slice"
    )
    p.add_argument("--model", required=True, type=Path, help="export folder (dermae export)")
    p.add_argument("--data", required=True, type=Path, help="labelled slice, any data layout")
    p.add_argument("--layout", default="auto", choices=["auto", "ham10000", "isic", "folders"])
    p.add_argument("--site", help="site name for the model card (default: the data folder)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-specificity", type=float, help="default 0.9")
    target.add_argument("--target-sensitivity", type=float)
    p.add_argument("--temperature", action="store_true", help="also fit temperature scaling")
    p.add_argument(
        "--holdout",
        type=float,
        metavar="FRAC",
        help="evaluate instead: hold out FRAC of the lesions, calibrate on the rest, compare "
        "fixed and adapted thresholds on the held-out part (the export is not changed)",
    )
    p.add_argument("--sizes", default="50,100,200", help="slice sizes to report CIs for")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="--holdout: where to write its JSON")
    p.set_defaults(handler=_calibrate)
    return parser


def _run(args: argparse.Namespace) -> Any:
    return _lazy("dermae.pipeline:run_pipeline")(
        _load(args),
        from_stage=args.from_stage,
        until_stage=args.until_stage,
        resume=not args.no_resume,
    )


def _prepare(args: argparse.Namespace) -> Any:
    cfg = _load(args)
    return _lazy("dermae.pipeline:run_command")(
        cfg, "dermae.data.prepare:prepare_stage", resume=not args.no_resume
    )


def _fetch(args: argparse.Namespace) -> Any:
    return _lazy("dermae.data.fetch:fetch_dataset")(
        args.name, args.to, url=args.url, sha256=args.sha256
    )


def _stage(args: argparse.Namespace) -> Any:
    # Through the pipeline's skip/resume logic, so `dermae run` later knows what this made.
    cfg = _load(args)
    return _lazy("dermae.pipeline:run_command")(cfg, args.target, resume=not args.no_resume)


def _evaluate(args: argparse.Namespace) -> Any:
    cfg = _load(args)
    return _lazy("dermae.evaluate.run:evaluate_command")(
        cfg, model_dir=args.model, split=args.split, data=args.data, out_dir=args.out
    )


def _export(args: argparse.Namespace) -> Any:
    cfg = _load(args)
    return _lazy("dermae.deploy.stages:export_command")(cfg, model_dir=args.model, out_dir=args.out)


def _predict(args: argparse.Namespace) -> Any:
    return _lazy("dermae.deploy.predictor:predict_command")(
        args.inputs, args.model, out=args.out, fmt=args.format
    )


def _calibrate(args: argparse.Namespace) -> Any:
    return _lazy("dermae.deploy.calibrate:calibrate_command")(
        args.model,
        args.data,
        layout=args.layout,
        site=args.site,
        target_specificity=args.target_specificity,
        target_sensitivity=args.target_sensitivity,
        temperature=args.temperature,
        holdout=args.holdout,
        sizes=[int(n) for n in args.sizes.split(",") if n.strip()],
        n_boot=args.bootstrap,
        seed=args.seed,
        out=args.out,
    )


def _prune(args: argparse.Namespace) -> Any:
    return _lazy("dermae.engine.prune:prune_command")(args.run_dir, dry_run=args.dry_run)


def _serve(args: argparse.Namespace) -> Any:
    return _lazy("dermae.deploy.server:serve")(
        args.model, host=args.host, port=args.port, docs=args.docs
    )


# What to do about file-system errors, by errno.
_ELSEWHERE = "or set run_dir (--run-dir) / --out to a folder you can write"
OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, or set run_dir / --out on another disk",
    errno.EACCES: f"make it writable, {_ELSEWHERE}",
    errno.EPERM: f"make it writable, {_ELSEWHERE}",
    errno.EROFS: f"the file system is read-only: {_ELSEWHERE}",
    errno.ENAMETOOLONG: "a name on this path is over 255 bytes: use a shorter one",
    errno.EISDIR: "a folder is where a file was expected: choose a file path",
    errno.ENOENT: "check the path",
    errno.EADDRINUSE: "another program listens on this port: pick another --port",
    errno.EADDRNOTAVAIL: "this machine has no such address: check --host",
}


def _os_error_text(err: OSError) -> str:
    """One line: the path, what went wrong, and what to do."""
    if err.errno is None:
        return str(err)  # raised with a message of its own
    path = Path(err.filename) if err.filename else None
    hint = OS_ERROR_HINTS.get(err.errno, "check the path and its permissions" if path else "")
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        blocker = path if path.is_file() else _file_on_path(path)
        if blocker is not None:
            hint = f"{blocker} is a file, not a folder: remove it, or choose another path"
    text = f"{path}: {err.strerror}" if path else str(err.strerror)
    return f"{text} ({hint})" if hint else text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not hasattr(args, "config"):  # commands with a config apply its `threads` in _load
            _lazy("dermae.engine.threads:export_threads")(0)  # serve/predict: no torch import
        result = args.handler(args)
    except (ConfigError, ValueError) as err:
        # Expected user errors (config keys, data rows) get one clear line, not a traceback.
        print(f"dermae: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"dermae: error: {_os_error_text(err)}", file=sys.stderr)
        return 2
    if isinstance(result, Path):
        print(f"dermae: wrote {result}")
    if isinstance(result, int) and not isinstance(result, bool):
        return result  # a command's own exit status (predict: EXIT_CODES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
