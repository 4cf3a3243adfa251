#!/usr/bin/env python
"""Run the notebook pipeline (01 data stats -> 05 submission) for one run and render HTML reports.

python run_pipeline.py --data-dir ../shared/datasets/animals
python run_pipeline.py --quick                          # small subset, 2 epochs: a smoke run
python run_pipeline.py -p epochs 60 -p image_size 128   # any notebook parameter
python run_pipeline.py --run runs/version_3 --from 03   # re-run part of an existing run
python run_pipeline.py --sweep lr=0.1,0.2,0.4 --sweep image_size=64,96   # one run per combination
python run_pipeline.py --compare runs/version_3 runs/version_4          # a comparison page
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from classifier_lib.utils.paths import default_data_dir
from classifier_lib.workflow.pipeline import PipelineError, compare_runs, run_pipeline, select_steps
from classifier_lib.workflow.sweep import parse_axes, run_sweep


def parse_value(text: str):
    """`-p` values are YAML scalars: 3 -> int, 0.5 -> float, true -> bool, anything else a string."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", default=default_data_dir(), help="dataset folder (default: $CLASSIFIER_DATA_DIR, else the project's data/)"
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a notebook parameter, passed to every notebook that declares it",
    )
    parser.add_argument("-f", "--parameters-file", help="a YAML file of notebook parameters")
    parser.add_argument("--quick", action="store_true", help="a 10%% stratified subset and 2 epochs, for a smoke run")
    parser.add_argument("--run", help="an existing run folder to continue (with --from or --only)")
    parser.add_argument("--from", dest="start_from", help="start at this notebook (e.g. 03)")
    parser.add_argument("--only", help="comma-separated notebooks to run (e.g. 03,04)")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="one pipeline run per combination of values (repeatable); the same command resumes it",
    )
    parser.add_argument("--sweep-name", help="name of the sweep (default: from its names and values)")
    parser.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="only render a comparison page of these runs")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--reports-dir", default="reports")
    args = parser.parse_args(argv)

    parameters = {}
    if args.parameters_file:
        with open(args.parameters_file) as handle:
            parameters |= yaml.safe_load(handle) or {}
    parameters |= {name: parse_value(value) for name, value in args.parameter}
    try:
        if (args.start_from or args.only) and not (args.run or args.sweep):
            raise PipelineError("--from and --only re-run part of an existing run: also pass --run runs/version_N")
        if args.compare:
            name = "-".join(Path(run).name for run in args.compare)
            page = compare_runs(args.compare, name, args.runs_dir, args.reports_dir)
            print(f"comparison: {page}")
            return 0
        if args.sweep:
            if args.run or args.start_from:
                raise PipelineError("a sweep makes its own run folders: --run and --from do not apply")
            steps = select_steps(args.only.split(",") if args.only else None)
            page = run_sweep(
                args.data_dir,
                parse_axes(args.sweep),
                parameters,
                args.sweep_name,
                args.quick,
                args.runs_dir,
                args.reports_dir,
                steps=steps,
            )
            print(f"comparison: {page}  (index: {args.reports_dir}/index.html)")
            return 0
        steps = select_steps(args.only.split(",") if args.only else None, args.start_from)
        run_dir = run_pipeline(args.data_dir, parameters, args.run, steps, args.quick, args.runs_dir, args.reports_dir)
    except (PipelineError, FileNotFoundError) as error:
        print(f"pipeline failed: {error}", file=sys.stderr)
        return 1
    print(f"run folder: {run_dir}")
    print(f"reports:    {args.reports_dir}/{run_dir.name}/  (index: {args.reports_dir}/index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
