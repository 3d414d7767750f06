"""`adkd report <run or multirun folder> [--metrics image_auroc,pixel_aupro]`: results.md and
results.csv (a row per category, a column per method and metric) and curves/ (every run's test
curves per category, one line per run). `--paper <name>`: paper_<name>.md and .csv instead, the
paper's table with ours beside its published numbers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adkd.report.paper import paper_names  # reads a small CSV: light


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="a run or multirun output folder")
    parser.add_argument(
        "--metrics", default=None, help="comma-separated metric names (default: those the datasets' papers report)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write results.md/csv (default: folder)")
    parser.add_argument(
        "--paper",
        choices=paper_names(),
        default=None,
        help="a paper's published numbers beside ours: paper_<name>.md/csv",
    )
    parser.add_argument(
        "--no-curves",
        dest="curves",
        action="store_false",
        help="skip curves/ (every run's image ROC and PR, and pixel PR, per category)",
    )


def run(args: argparse.Namespace) -> int:
    # the heavy part, once the arguments are read
    from adkd.report.curves import write_curves
    from adkd.report.paper import write_paper
    from adkd.report.tables import write_report

    try:
        if args.paper is not None:
            md_path, csv_path, md = write_paper(args.folder, args.paper, args.out)
        else:
            metrics = tuple(args.metrics.split(",")) if args.metrics else None
            md_path, csv_path, md = write_report(args.folder, metrics, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(md)
    print(f"Written: {md_path}\n         {csv_path}")
    if args.curves and args.paper is None:
        curves = write_curves(args.folder, md_path.parent)
        if curves:
            print(f"         {len(curves)} curves in {md_path.parent / 'curves'}")
    return 0
