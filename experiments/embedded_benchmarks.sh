#!/usr/bin/env bash
# Every method and the ablations the issues ask for, on the data that ships with the project
# (textures, cells and parts: pixel masks; elpv: image labels only), mobilenet_v2 pretrained, each
# dataset's demo budget (128 px, each method's steps; EfficientAD at 256 px, the least its autoencoder takes,
# with a teacher distilled offline once), then one table per set. Several hours on 2 CPU cores:
# DRAEM and DeSTSeg take most of it.
#   experiments/embedded_benchmarks.sh [methods|adps_ablations|dhkd_ablations|all] [extra overrides]
set -euo pipefail
PART=${1:-all}; shift || true
OUT=${OUT:-outputs/embedded_benchmarks}
run() { python -m adkd.run -m "$@"; }
report() { adkd report "$1" --metrics "$2"; }
# Every registered method but EfficientAD, which needs 256 px and a teacher file (below).
METHODS=$(adkd methods | grep -vx efficientad | paste -sd, -)
TEACHER=${TEACHER:-$OUT/efficientad_teacher_s.pth}  # or the published one: TEACHER=download
PIXEL=pixel_ap,pixel_auroc,pixel_aupro,image_auroc
IMAGE=image_auroc,image_ap

if [[ $PART == methods || $PART == all ]]; then
  if [[ $TEACHER != download && ! -f $TEACHER ]]; then  # offline: distilled from mobilenet_v2 (minutes)
    mkdir -p "$(dirname "$TEACHER")"
    adkd distill --backbone mobilenet_v2 --out "$TEACHER"
  fi
  for set in "textures brick,grass,gravel" "cells mono,poly" "parts washer,mesh,gear" "elpv mono,poly"; do
    read -r dataset categories <<<"$set"
    run method=$METHODS dataset=$dataset category=$categories hydra.sweep.dir=$OUT/$dataset "$@"
    run method=efficientad image_size=256 method.teacher_weights=$TEACHER dataset=$dataset \
      category=$categories hydra.sweep.dir=$OUT/$dataset/efficientad "$@"
  done
  report $OUT/textures $PIXEL; report $OUT/cells $PIXEL; report $OUT/parts $PIXEL; report $OUT/elpv $IMAGE
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
