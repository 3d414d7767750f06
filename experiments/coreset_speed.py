"""PatchCore's greedy coreset: adkd's selection against anomalib's ``KCenterGreedy`` on the same
features, side by side in one process (alternating rounds, medians), checking that both choose the
same patches (up to ties at float32 precision). The default size is ELPV's at 128 px: about 100k
patch features of mobilenet_v2's two tapped stages (128 channels after PatchCore's pooling), 10%
kept.

    python experiments/coreset_speed.py [--patches 100000] [--dim 128] [--ratio 0.1] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    from anomalib.models.components import KCenterGreedy

    from adkd.methods.patchcore.coreset import greedy_coreset

    torch.manual_seed(0)
    features = torch.randn(args.patches, args.dim) * torch.linspace(0.1, 2, args.dim)  # anisotropic, as CNN features
    keep = int(args.patches * args.ratio)

    def anomalib_selection() -> list[int]:
        torch.manual_seed(1), np.random.seed(1)
        return KCenterGreedy(features, sampling_ratio=args.ratio).select_coreset_idxs()

    def adkd_selection() -> list[int]:
        torch.manual_seed(1), np.random.seed(1)
        return greedy_coreset(features, keep, progress=False).tolist()

    times = {"anomalib KCenterGreedy": [], "adkd greedy_coreset": []}
    chosen = {}
    for _ in range(args.rounds):
        for name, select in (("anomalib KCenterGreedy", anomalib_selection), ("adkd greedy_coreset", adkd_selection)):
            start = time.perf_counter()
            chosen[name] = select()
            times[name].append(time.perf_counter() - start)
    ours, theirs = chosen["adkd greedy_coreset"], chosen["anomalib KCenterGreedy"]
    print(
        f"greedy coreset: {args.patches} x {args.dim} features, {keep} kept, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} alternating rounds"
    )
    for name, values in times.items():
        print(f"  {name:<24}{statistics.median(values):8.2f} s")
    ratio = statistics.median(times["anomalib KCenterGreedy"]) / statistics.median(times["adkd greedy_coreset"])
    print(f"  adkd {ratio:.1f}x faster")
    shared = len(set(ours) & set(theirs)) / len(theirs)
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
    if first is None:
        print("  the same patches chosen, in the same order")
        return
    # The two compute the same distances in float32 by different sums (anomalib: |x - c|; adkd:
    # |x|^2 - 2 x.c + |c|^2): where two candidates tie to float32 precision they may pick either.
    torch.manual_seed(1), np.random.seed(1)
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    projection = SparseRandomProjection(eps=0.9)
    projection.fit(features)
    projected = projection.transform(features).double()
    candidates = projected[[theirs[first], ours[first]]]
    nearest = torch.cdist(candidates, projected[theirs[:first]]).min(1).values  # to the centres chosen before
    gap = (nearest[0] - nearest[1]).abs() / nearest[0]
    print(
        f"  the same picks up to pick {first} of {keep}, where the two candidates' distances (float64) "
        f"differ by {gap:.1e} of their value, a float32 tie; {100 * shared:.1f}% of the chosen patches shared"
    )
    if gap > 1e-5:
        raise SystemExit("the two selections differ by more than a float32 tie")


if __name__ == "__main__":
    main()
