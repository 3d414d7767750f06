"""Render experiments/README.md's tables from the CSV files in experiments/results/.

Each table in the README sits between two markers:

    <!-- table: parts -->
    | ... the Markdown table rendered from experiments/results/parts.csv ... |

    <!-- end table -->

The first CSV row is the header; every cell is printed as the CSV holds it (numbers are never
re-formatted), with `|` escaped. A column is right-aligned when every non-empty cell in it is a
number (optionally `x +- y`, or ending in `%`, `x` or ` s`).

    python experiments/render_tables.py            # rewrite the README's tables in place
    python experiments/render_tables.py --check    # exit 1, naming them, if any table is stale
    python experiments/render_tables.py --root DIR # DIR/experiments/README.md and DIR/experiments/results/

Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"^<!-- table: (?P<name>[\w.-]+) -->\n(?P<body>.*?)^<!-- end table -->$", re.M | re.S)
NUMBER = r"[+-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?"
NUMERIC = re.compile(rf"{NUMBER}(?: \+- {NUMBER})?(?:%|x| s)?")


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ValueError(f"{path}: empty")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise ValueError(f"{path}: row {number} has {len(row)} cells, the header {width}")
    return rows


def cell(text: str) -> str:
    return " ".join(text.split("\n")).replace("|", r"\|")


def render(rows: list[list[str]]) -> str:
    header, body = rows[0], rows[1:]
    rules = []
    for column in range(len(header)):
        values = [row[column] for row in body if row[column].strip()]
        numeric = bool(values) and all(NUMERIC.fullmatch(v.strip()) for v in values)
        rules.append("---:" if numeric else "---")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n\n"


def rendered(root: Path) -> tuple[str, str, list[str], list[str]]:
    """(current README, README as rendered, stale table names, errors)."""
    readme = root / "experiments" / "README.md"
    results = root / "experiments" / "results"
    text = readme.read_text(encoding="utf-8")
    csvs = {p.stem: p for p in sorted(results.glob("*.csv"))}
    seen, stale, errors = set(), [], []

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name in seen:
            errors.append(f"table {name!r} appears twice in the README")
        seen.add(name)
        if name not in csvs:
            errors.append(f"table {name!r} has no experiments/results/{name}.csv")
            return match[0]
        try:
            table = render(read_rows(csvs[name]))
        except ValueError as e:
            errors.append(str(e))
            return match[0]
        if table != match["body"]:
            stale.append(name)
        return f"<!-- table: {name} -->\n{table}<!-- end table -->"

    new = BLOCK.sub(replace, text)
    errors += [f"experiments/results/{name}.csv has no table in the README" for name in csvs if name not in seen]
    return text, new, stale, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the folder holding experiments/ (default: this repository)",
    )
    args = parser.parse_args(argv)
    text, new, stale, errors = rendered(args.root)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.check:
        if stale:
            print("stale tables (run python experiments/render_tables.py): " + ", ".join(stale), file=sys.stderr)
        return 1 if stale or errors else 0
    if new != text:
        (args.root / "experiments" / "README.md").write_text(new, encoding="utf-8")
        print("rewrote: " + ", ".join(stale))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
