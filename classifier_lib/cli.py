"""Command line: `python -m classifier_lib {train,lr-find,evaluate,predict,submit,export,ensemble,pseudo-label,clear-cache}`."""

from __future__ import annotations

import argparse
import json
import sys

from classifier_lib.config import Config, ConfigError, parse_duration
from classifier_lib.data.folders import DataLayoutError
from classifier_lib.data.images import UnreadableImage
from classifier_lib.inference.checkpoint import CheckpointError, read_checkpoint
from classifier_lib.inference.export import ExportError
from classifier_lib.presets import PRESETS, run_config
from classifier_lib.utils import distributed
from classifier_lib.utils.device import DeviceError

# Errors about the user's input: one clean line. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (
    DataLayoutError,
    CheckpointError,
    UnreadableImage,
    ConfigError,
    DeviceError,
    FileNotFoundError,
    FloatingPointError,
    ExportError,
)

# The seed project's flags, mapped onto config keys.
SEED_FLAGS = {
    "--epochs": ("train.epochs", int),
    "--subset": ("data.subset", float),
    "--init-learning-rate": ("train.lr", float),
    "--lr": ("train.lr", float),
    "--checkpoint-every": ("train.checkpoint_every", int),
    "--image-size": ("data.image_size", int),
    "--batch-size": ("data.batch_size", int),
    "--seed": ("system.seed", int),
    "--device": ("system.device", str),
    "--precision": ("train.precision", str),
    "--scheduler": ("train.scheduler", str),
    "--optimizer": ("train.optimizer", str),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classifier_lib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from scratch (or resume one)")
    add_recipe_arguments(train)
    train.add_argument("--runs-dir", default="runs", help="where run folders version_N are created")
    train.add_argument("--run-dir", help="train into this (existing or new) folder instead of a new version_N")
    train.add_argument(
        "--train-on-all",
        action="store_const",
        const=True,
        dest="data.train_on_all",
        help="train on Train + Valid: the final model; its Valid figures are then no score",
    )
    train.add_argument("--resume", help="continue training from this checkpoint (its run folder and config)")
    train.add_argument(
        "--budget",
        type=parse_duration,
        dest="train.budget_s",
        metavar="DURATION",
        help="train for as many epochs as fit in this time on this machine (90s, 20m, 1h); --epochs N instead fixes them",
    )

    lr_find = commands.add_parser("lr-find", help="learning-rate range test: loss against an exponentially growing rate")
    add_recipe_arguments(lr_find)
    lr_find.add_argument("--start-lr", type=float, default=1e-4)
    lr_find.add_argument("--end-lr", type=float, default=10.0)
    lr_find.add_argument("--steps", type=int, default=100, help="batches in the sweep")
    lr_find.add_argument("-o", "--output", default="lr_find.png", help="where to save the loss-vs-LR plot")

    evaluate = commands.add_parser("evaluate", help="accuracy and per-class report of a checkpoint on the validation split")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--data-dir", default=None, help="default: the data folder the checkpoint was trained on")
    evaluate.add_argument(
        "--split",
        choices=["valid", "train"],
        default="valid",
        help="valid: the Valid folder, or without one the part of Train that training held out",
    )
    evaluate.add_argument(
        "--folder",
        help="score any labelled folder instead (FOLDER/<class>/..., any depth below): photos that are neither Train nor Valid",
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")

    predict = commands.add_parser("predict", help="predict the class of image files")
    predict.add_argument("checkpoint")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")

    submit = commands.add_parser("submit", help="predict an unlabelled (flat or nested) folder into a submission CSV")
    submit.add_argument("checkpoint")
    submit.add_argument("test_dir")
    submit.add_argument("-o", "--output", default="submission.csv")
    submit.add_argument(
        "--no-formula-guard",
        action="store_false",
        dest="formula_guard",
        help="write ids and labels exactly (for a grader comparing them); by default a cell starting "
        "with = + - @ gets a leading ' so that a spreadsheet shows it as text",
    )
    for sub in (evaluate, predict, submit):
        sub.add_argument("--device", default="auto")
    for sub in (predict, submit):
        sub.add_argument(
            "--backend",
            choices=["torch", "onnxruntime"],
            default="torch",
            help="onnxruntime: CHECKPOINT is a file made by the export command",
        )

    export = commands.add_parser("export", help="export a checkpoint to ONNX or TorchScript, checked against PyTorch")
    export.add_argument("checkpoint")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument("-o", "--output", required=True)
    export.add_argument("--float-input", action="store_true", help="take float32 images in [0, 1] instead of uint8")
    export.add_argument(
        "--data-dir",
        help="check parity on this folder's validation images "
        "(default: the checkpoint's data folder when it exists, else generated images)",
    )
    ensemble = commands.add_parser("ensemble", help="several checkpoints in one file that averages their probabilities")
    ensemble.add_argument("checkpoints", nargs="+")
    ensemble.add_argument("-o", "--output", required=True)
    pseudo = commands.add_parser(
        "pseudo-label",
        help="copy the unlabelled images a model is confident about into "
        "class folders, for training a student with --set data.extra_train_dir",
    )
    pseudo.add_argument("checkpoint")
    pseudo.add_argument("folder", help="unlabelled images (flat or nested), e.g. DATA_DIR/Test")
    pseudo.add_argument("-o", "--output", required=True, help="a new folder: OUTPUT/<class>/ and pseudo_labels.csv")
    pseudo.add_argument("--threshold", type=float, default=0.9, help="keep images whose top probability is at least this")
    pseudo.add_argument("--device", default="auto")
    commands.add_parser("clear-cache", help="delete the decoded-image cache (~/.cache/classifier_lib)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    return parser


def add_recipe_arguments(command: argparse.ArgumentParser) -> None:
    """The options that make a training config: data folder, preset, config file, the seed's flags, --set."""
    command.add_argument("--data-dir", help="dataset folder (default: $CLASSIFIER_DATA_DIR, else the project's data/)")
    command.add_argument("--config", help="a config.json to start from (e.g. from an earlier run folder)")
    command.add_argument("--preset", choices=list(PRESETS), help="a recipe for a time budget (see the README)")
    for flag, (key, kind) in SEED_FLAGS.items():
        command.add_argument(flag, type=kind, dest=key, default=None, metavar=kind.__name__.upper(), help=f"sets {key}")
    command.add_argument(
        "--run-just-a-subset",
        action="store_const",
        const=0.05,
        dest="data.subset",
        help="train on a stratified 5%% subset (the seed's flag)",
    )
    command.add_argument(
        "--half-precision",
        action="store_const",
        const="auto",
        dest="train.precision",
        help="mixed precision where the hardware runs it: bf16 on AVX-512 CPUs and recent GPUs, fp16 on older GPUs (the default)",
    )
    command.add_argument("--fp32", action="store_const", const="fp32", dest="train.precision", help="full fp32 precision")
    command.add_argument(
        "--use-scheduler",
        action="store_const",
        const="onecycle",
        dest="train.scheduler",
        help="one-cycle learning-rate schedule (the default)",
    )
    command.add_argument(
        "--data-augmentation",
        action="store_const",
        const=True,
        dest="data.augment",
        help="augment training batches (the default)",
    )
    command.add_argument("--no-augmentation", action="store_const", const=False, dest="data.augment")
    command.add_argument(
        "--set",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="any config field, e.g. --set model.widths 32,64,128,256",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """--preset (or --config file; a resumed run: its checkpoint's config) < explicit flags and --set.
    A config file's `train.resume` is kept (torchrun launches from the notebook pass a resume that way)."""
    overrides = {key: value for key, value in vars(args).items() if "." in key and value is not None}
    overrides |= dict(args.set)
    resume = getattr(args, "resume", None)
    if resume:
        overrides["train.resume"] = resume
        return Config.from_dict(read_checkpoint(resume)["config"]).override(
            overrides | ({"data.data_dir": args.data_dir} if args.data_dir else {})
        )
    return run_config(args.preset, args.config, overrides, args.data_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from classifier_lib.training.engine import train

    result = train(config_from_args(args), run_dir=args.run_dir, runs_root=args.runs_dir)
    if not distributed.is_main():
        return 0
    print(
        f"final validation accuracy {result.final_valid_acc:.4f} (last.pt); "
        f"best {result.best_valid_acc:.4f} at epoch {result.best_epoch} (best.pt, chosen on Valid)"
    )
    print(f"run folder: {result.run_dir}")
    return 130 if result.interrupted else 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from classifier_lib.training.lr_finder import find_lr

    result = find_lr(config_from_args(args), start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    result.plot().savefig(args.output, dpi=100)
    print(
        f"{len(result.lrs)} steps from lr {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}; "
        f"steepest descent of the loss at lr {result.suggestion:.3g}"
    )
    print(f"plot: {args.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from classifier_lib.report.evaluation import evaluate_checkpoint, evaluate_folder
    from classifier_lib.report.metrics import headline

    if args.folder:
        evaluation = evaluate_folder(args.checkpoint, args.folder, device=args.device)
    else:
        evaluation = evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, device=args.device)
    if args.json:
        print(json.dumps(evaluation.record(args.checkpoint), indent=2))
    else:
        print(f"{headline(evaluation.summary())} on {len(evaluation.labels)} images: {evaluation.split}")
        if evaluation.caveat:
            print(f"note: {evaluation.caveat}")
        if evaluation.absent:
            print(f"no images of {', '.join(evaluation.absent)}: left out of the table and its averages")
        print("per class, worst recall first:")
        print(evaluation.per_class().round(3).to_string())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from classifier_lib.inference.predictor import open_predictor

    predictor = open_predictor(args.checkpoint, args.backend, args.device)
    failures = 0
    for image in args.images:
        try:
            prediction = predictor.predict(image)
        except UnreadableImage as error:
            failures += 1
            print(json.dumps({"image": image, "error": str(error)}) if args.json else f"{image}: error: {error}")
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "image": image,
                        "label": prediction.label,
                        "confidence": prediction.confidence,
                        "top5": prediction.top(5),
                        "probabilities": prediction.probabilities,
                    }
                )
            )
        else:
            others = ", ".join(f"{label} {p:.3f}" for label, p in list(prediction.top(5).items())[1:])
            print(f"{image}: {prediction.label} ({prediction.confidence:.3f})" + (f"; then {others}" if others else ""))
    return 1 if failures else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from classifier_lib.inference.predictor import open_predictor, write_submission

    predictions = open_predictor(args.checkpoint, args.backend, args.device).predict_folder(args.test_dir)
    csv_path, probs_path = write_submission(predictions, args.output, args.formula_guard)
    print(f"{len(predictions.ids)} images -> {csv_path} (probabilities: {probs_path})")
    for _, reason in predictions.skipped:  # the reason starts with the file's path
        print(f"skipped {reason}")
    if predictions.skipped:
        print(f"{len(predictions.skipped)} unreadable files skipped")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from classifier_lib.inference.export import export, parity_images

    images, source = parity_images(args.checkpoint, args.data_dir)
    report = export(args.checkpoint, args.output, args.format, images, uint8_input=not args.float_input)
    print(f"parity on {report.images} {source}: max |dp| {report.max_abs_diff:.2e}, labels identical: {report.labels_identical}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {report.path}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from classifier_lib.inference.ensembles import make_ensemble

    path = make_ensemble(args.checkpoints, args.output)
    print(f"wrote {path}: the average of {len(args.checkpoints)} models; use it like any checkpoint")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from classifier_lib.inference.pseudo import pseudo_label

    result = pseudo_label(args.checkpoint, args.folder, args.output, args.threshold, args.device)
    print(result.summary())
    print(f"train a student on them with: --set data.extra_train_dir {result.out_dir}")
    return 0


def cmd_clear_cache(args: argparse.Namespace) -> int:
    from classifier_lib.data.cache import cache_dir, clear_cache

    files, freed = clear_cache()
    print(f"removed {files} cache files ({freed / 2**20:.1f} MiB) from {cache_dir()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "predict": cmd_predict,
        "submit": cmd_submit,
        "export": cmd_export,
        "clear-cache": cmd_clear_cache,
        "lr-find": cmd_lr_find,
        "ensemble": cmd_ensemble,
        "pseudo-label": cmd_pseudo_label,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # outside training's own handler, e.g. while decoding images
        print("interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
