"""experiments/README.md's tables are rendered from experiments/results/*.csv and must stay current."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "render_tables.py"


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(root)], capture_output=True, text=True, timeout=60
    )


def test_readme_tables_match_their_csv_files():
    result = check(ROOT)
    assert result.returncode == 0, f"run python experiments/render_tables.py\n{result.stderr}"


def test_a_changed_value_makes_the_check_fail(tmp_path):
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "README.md", tmp_path / "experiments" / "README.md")
    shutil.copytree(ROOT / "experiments" / "results", tmp_path / "experiments" / "results")
    assert check(tmp_path).returncode == 0

    path = tmp_path / "experiments" / "results" / "parts.csv"
    rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
    column = next(i for i, value in enumerate(rows[1]) if re.fullmatch(r"\d+\.\d+", value))
    old = rows[1][column]
    rows[1][column] = new = f"{float(old) + 1.5:.1f}"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)

    result = check(tmp_path)
    assert result.returncode == 1
    assert "parts" in result.stderr

    # Rendering in place brings the README up to date, with the new value in the table.
    subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path)], check=True, capture_output=True, timeout=60)
    assert check(tmp_path).returncode == 0
    text = (tmp_path / "experiments" / "README.md").read_text(encoding="utf-8")
    table = text.split("<!-- table: parts -->\n", 1)[1].split("<!-- end table -->", 1)[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {rows[1][0]} |"))
    assert f"| {new} |" in row and f"| {old} |" not in row


def test_a_table_without_data_or_data_without_a_table_fails(tmp_path):
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    readme = tmp_path / "experiments" / "README.md"
    readme.write_text("# x\n<!-- table: missing -->\n<!-- end table -->\n", encoding="utf-8")
    (tmp_path / "experiments" / "results" / "orphan.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    result = check(tmp_path)
    assert result.returncode == 1
    assert "missing" in result.stderr and "orphan" in result.stderr
