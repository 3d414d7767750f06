"""`adkd methods`: the registered methods, one per line (a method is a yaml in conf/method/)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from adkd.methods.registry import method_names

    print("\n".join(method_names()))
    return 0
