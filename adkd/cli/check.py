"""`adkd check <overrides> [-- <overrides> ...]`: the data of every run the sweeps
``adkd fit -m <overrides>`` will start, checked before the first starts (every image and mask of
every split, from file headers), so that a long series of sweeps does not stop at its last dataset
on a path. Exit status 1 with every problem listed.

    adkd check dataset=mvtec category=bottle,cable -- dataset=visa category=all
"""

from __future__ import annotations

import sys

PASS_THROUGH = True  # its arguments are Hydra overrides, with -- between sweeps (argparse would drop them)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: adkd check <key=value ...> [-- <key=value ...>]\n\n{__doc__}")
        return 0 if argv else 2
    from adkd.training.data_check import check_sweeps  # the heavy part, once the arguments are read

    sweeps = [[]]
    for argument in argv:
        if argument == "--":
            sweeps.append([])
        else:
            sweeps[-1].append(argument)
    problems = check_sweeps([sweep for sweep in sweeps if sweep])
    if problems:
        print(
            f"error: {len(problems)} problems with the data of the runs to come:\n" + "\n".join(problems),
            file=sys.stderr,
        )
        return 1
    return 0
