"""What each Real-IAD category costs, counted in a downloaded copy: its training and test images
(and test parts, multi-view), the gigabytes of the files a run reads, and the seconds an epoch takes
at a training rate (images/s; the default is RD4AD's on one H100 in experiments/README.md's
training-throughput table, 256 px, batch 32, 16-mixed). Prints a Markdown table, one row a category
and the sum.

    python experiments/realiad_cost.py --root /path/to/Real-IAD [--protocol multi_view|single_view]
        [--resolution 1024] [--rate 516.1] [--categories audiojack,pcb]
"""

from __future__ import annotations

import argparse

from adkd.data.realiad import RealIADDataModule, category_cost


def table(root: str, protocol: str, resolution: str, rate: float, categories: list[str]) -> str:
    lines = [
        f"Real-IAD, {protocol}, realiad_{resolution}; an epoch at {rate:g} training images/s",
        "",
        "| category | train images | test images | anomalous | test parts | GB | s / epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total = {"train_images": 0, "test_images": 0, "test_anomalous": 0, "test_samples": 0, "bytes": 0}
    for category in categories:
        cost = category_cost(root, category, protocol, resolution)
        total = {key: total[key] + cost[key] for key in total}
        lines.append(_row(category, cost, rate))
    lines.append(_row(f"all {len(categories)}", total, rate))
    return "\n".join(lines)


def _row(name: str, cost: dict[str, int], rate: float) -> str:
    return (
        f"| {name} | {cost['train_images']} | {cost['test_images']} | {cost['test_anomalous']} | "
        f"{cost['test_samples']} | {cost['bytes'] / 1e9:.2f} | {cost['train_images'] / rate:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the folder holding realiad_jsons/ and realiad_<resolution>/")
    parser.add_argument("--protocol", default="multi_view", choices=("multi_view", "single_view"))
    parser.add_argument("--resolution", default="1024")
    parser.add_argument("--rate", type=float, default=516.1, help="training images/s (the bench's RD4AD on an H100)")
    parser.add_argument("--categories", default=",".join(RealIADDataModule.categories))
    args = parser.parse_args()
    print(table(args.root, args.protocol, args.resolution, args.rate, args.categories.split(",")))


if __name__ == "__main__":
    main()
