#!/usr/bin/env bash
# ADPS on the paper's protocol: every MVTec AD category and KolektorSDD2, then the per-category
# table (pixel AP is the paper's headline: 77.4 on MVTec AD, 72.5 on KolektorSDD2).
#   experiments/adps_paper.sh /data/mvtec /data/ksdd2 [extra overrides, e.g. logger=wandb]
set -euo pipefail
MVTEC=${1:?path to MVTec AD}; KSDD2=${2:?path to KolektorSDD2}; shift 2
OUT=outputs/adps_paper/$(date +%Y-%m-%d_%H-%M-%S)
CATEGORIES=bottle,cable,capsule,carpet,grid,hazelnut,leather,metal_nut,pill,screw,tile,toothbrush,transistor,wood,zipper
python -m adkd.run -m experiment=adps_paper dataset=mvtec dataset.root="$MVTEC" category=$CATEGORIES \
  hydra.sweep.dir="$OUT/mvtec" "$@"
python -m adkd.run -m experiment=adps_paper dataset=ksdd2 dataset.root="$KSDD2" hydra.sweep.dir="$OUT/ksdd2" "$@"
METRICS=pixel_ap,pixel_auroc,pixel_aupro,image_auroc
python -m adkd.report "$OUT/mvtec" --metrics $METRICS
python -m adkd.report "$OUT/ksdd2" --metrics $METRICS
