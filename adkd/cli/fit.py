"""Train a method and test it (the same as ``python -m adkd.run``).

The run folder (outputs/runs/<method>/<dataset>/<category>/<time>/) gets the checkpoint, the composed
config, metrics.json, figures and plots; Ctrl-C keeps the last checkpoint and prints the command
that resumes. Settings are Hydra overrides: a config group's option (method=stfpm) or a value
(category=bottle, steps=500, dataset.root=my_parts).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PASS_THROUGH = True  # Hydra parses the overrides
CONF = Path(__file__).resolve().parents[2] / "conf"
HYDRA_FLAGS = """Hydra's flags:
  -m, --multirun     sweep comma-separated values (category=bottle,cable seed=0,1) with the chosen
                     hydra/launcher (basic; parallel, local, slurm: conf/hydra/launcher/)
  --cfg job          print the composed config and stop; --info: where it came from
  --hydra-help       Hydra's own help (its config dump included)"""


def usage() -> str:
    """Config groups with their options (the default starred) and the top-level settings, read
    from conf/ as files: no config is composed."""
    defaults = {}
    lines = (CONF / "run.yaml").read_text().splitlines()
    for line in lines:
        found = re.match(r"\s+-\s+([\w/]+):\s*(\w+)", line)
        if found:
            defaults[found.group(1)] = found.group(2)
    groups = []
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        shown = " ".join(f"{o}*" if o == defaults.get(folder.name) else o for o in options)
        groups.append(f"  {folder.name:<15}{shown}")
    settings = []
    for line in lines:
        found = re.match(r"^([a-z_]+):\s+([^#\s][^#]*?)\s*(?:#\s*(.*))?$", line)
        if found and found.group(1) not in ("method_name", "dataset_name", "output_dir", "tags", "synthesis"):
            name, value, comment = found.groups()
            setting = f"{name}={value}"
            settings.append(f"  {setting:<27} {_clip(comment or '', 70)}".rstrip())
    return "\n".join(
        [
            "usage: adkd fit [group=option ...] [key=value ...] [-m]",
            "",
            __doc__.strip(),
            "",
            "config groups (conf/<group>/<option>.yaml; * the default):",
            *groups,
            "",
            "settings (conf/run.yaml; a dataset or method sets some):",
            *settings,
            "",
            HYDRA_FLAGS,
            "",
            "examples:",
            "  adkd fit method=adps dataset=mvtec dataset.root=datasets/mvtec category=bottle trainer=gpu",
            "  adkd fit method=stfpm dataset=folder dataset.root=my_parts budget=demo",
            "  adkd fit -m method=adps,rd4ad dataset=mvtec category=bottle,cable",
        ]
    )


def _clip(text: str, width: int) -> str:
    """``text`` cut at a word to fit ``width``, with an ellipsis where cut."""
    return text if len(text) <= width else text[: text.rfind(" ", 0, width - 1)] + " …"


def run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    from adkd.training.run import cli  # the heavy part, once the arguments are read

    sys.argv = ["adkd fit", *argv]
    cli(program="adkd fit")
    return 0
