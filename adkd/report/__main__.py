"""`python -m adkd.report <run or multirun folder> [--metrics image_auroc,pixel_aupro]`: results.md and
results.csv (a row per category, a column per method and metric) and curves/ (every run's test
curves per category, one line per run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adkd.report.tables import DEFAULT_METRICS, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adkd.report", description=__doc__)
    parser.add_argument("folder", type=Path, help="a run or multirun output folder")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric names")
    parser.add_argument("--out", type=Path, default=None, help="where to write results.md/csv (default: folder)")
    parser.add_argument("--no-curves", dest="curves", action="store_false",
                        help="skip curves/ (every run's image ROC and PR, and pixel PR, per category)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        md_path, csv_path, md = write_report(args.folder, tuple(args.metrics.split(",")), args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(md)
    print(f"Written: {md_path}\n         {csv_path}")
    if args.curves:
        from adkd.report.curves import write_curves

        curves = write_curves(args.folder, md_path.parent)
        if curves:
            print(f"         {len(curves)} curves in {md_path.parent / 'curves'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
