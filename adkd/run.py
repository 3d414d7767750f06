"""``python -m adkd.run [key=value ...]``: train and test (the same as ``adkd fit``; its code is
:mod:`adkd.training.run`). :func:`run` is the Python API: a composed config in, the results out."""

from adkd.training.run import cli, main, run

__all__ = ["cli", "main", "run"]

if __name__ == "__main__":
    cli()
