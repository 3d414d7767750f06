"""`adkd test <run folder or .ckpt> [key=value ...]`: score a trained model on a dataset, as a run's
own test does (metrics.json, figures, plots, test_predictions.csv), in <run>/tests/<dataset>-<category>-<time>/.

Without overrides, the run's own test split; with them, the run's data changed by Hydra overrides:

    adkd test outputs/runs/stfpm/mvtec/bottle/<run>                          the run's own test split
    adkd test <run> dataset.root=line2_bottles                               the same kind of data elsewhere
    adkd test <run> dataset=folder dataset.root=my_parts category=washer     another dataset
"""

from __future__ import annotations

import sys
from pathlib import Path

PASS_THROUGH = True  # the overrides are Hydra's


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: adkd test <run folder or .ckpt> [key=value ...] [--out DIR] [--device cpu|cuda]\n\n{__doc__}")
        return 0 if argv else 2
    source, rest, options = Path(argv[0]), [], {"--out": None, "--device": "cpu"}
    words = iter(argv[1:])
    for word in words:
        key, sep, value = word.partition("=")
        if key in options:
            options[key] = value if sep else next(words, None)
            if options[key] is None:
                print(f"error: {key} needs a value", file=sys.stderr)
                return 2
        else:
            rest.append(word)
    from adkd.errors import UserError  # the heavy part, once the arguments are read
    from adkd.training.testing import test_model

    try:
        _, out = test_model(source, rest, Path(options["--out"]) if options["--out"] else None, options["--device"])
    except UserError as err:  # what the datamodule and the checkpoint reader say
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: nothing was scored to the end.", file=sys.stderr)
        return 130
    print(f"Written: {out}")
    return 0
