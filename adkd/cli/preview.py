"""`adkd preview method=adps [dataset=... category=...]`: a grid of what a method that trains on
synthetic anomalies sees: training images, the same with anomalies, and their masks. The same
config and seed as ``adkd fit``, so it shows the first training draws."""

from __future__ import annotations

import sys

PASS_THROUGH = True  # Hydra parses the overrides


def run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: adkd preview [key=value ...]\n\n{__doc__}\nThe overrides are adkd fit's (adkd fit --help).")
        return 0
    from adkd.training.preview import main  # the heavy part, once the arguments are read

    sys.argv = ["adkd preview", *argv]
    main()
    return 0
