"""`python -m adkd.report <run or multirun folder> [--metrics image_auroc,pixel_aupro]`."""

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
    args = parser.parse_args(argv)
    try:
        md_path, csv_path, md = write_report(args.folder, tuple(args.metrics.split(",")), args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(md)
    print(f"Written: {md_path}\n         {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
