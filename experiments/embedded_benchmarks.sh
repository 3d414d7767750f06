#!/usr/bin/env bash
# Every method and the ablations the issues ask for, on the data that ships with the project
# (textures: pixel masks; elpv: image labels only), mobilenet_v2 pretrained, each dataset's demo
# budget (128 px, 10 epochs), then one table per group. About 1.5-2 h on 2 CPU cores.
#   experiments/embedded_benchmarks.sh [methods|adps_ablations|dhkd_ablations|all] [extra overrides]
set -euo pipefail
PART=${1:-all}; shift || true
OUT=${OUT:-outputs/embedded_benchmarks}
run() { python -m adkd.run -m "$@"; }
report() { python -m adkd.report "$1" --metrics "$2"; }
METHODS=$(python -m adkd.methods.registry | paste -sd, -)  # every registered method
PIXEL=pixel_ap,pixel_auroc,pixel_aupro,image_auroc
IMAGE=image_auroc,image_ap

if [[ $PART == methods || $PART == all ]]; then
  run method=$METHODS dataset=textures category=brick,grass,gravel hydra.sweep.dir=$OUT/textures "$@"
  run method=$METHODS dataset=elpv category=mono,poly hydra.sweep.dir=$OUT/elpv "$@"
  report $OUT/textures $PIXEL; report $OUT/elpv $IMAGE
fi
if [[ $PART == adps_ablations || $PART == all ]]; then  # k=1 (symmetric) and WMB replaced by T - S
  run method=adps dataset=textures category=brick,grass,gravel method.network.k=1 label=adps-k1 \
    hydra.sweep.dir=$OUT/adps_ablations/k1 "$@"
  run method=adps dataset=textures category=brick,grass,gravel method.network.wmb=diff label=adps-diff \
    hydra.sweep.dir=$OUT/adps_ablations/diff "$@"
  report $OUT/adps_ablations $PIXEL
fi
if [[ $PART == dhkd_ablations || $PART == all ]]; then  # each part off in turn; and no pretraining
  for ablation in "method.network.frequency=false label=dhkd-nofreq" "method.noise_sigma=0 label=dhkd-nonoise" \
                  "method.affinity_weight=0 label=dhkd-noaffinity" "backbone.pretrained=false label=dhkd-random"; do
    read -r switch label <<<"$ablation"
    run method=dhkd dataset=elpv category=mono,poly $switch $label \
      hydra.sweep.dir=$OUT/dhkd_ablations/${label#label=} "$@"
  done
  report $OUT/dhkd_ablations $IMAGE
fi
