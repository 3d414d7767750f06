#!/usr/bin/env bash
# ADPS on the paper's protocol: every MVTec AD category, KolektorSDD and KolektorSDD2 (experiment=adps_paper:
# WRN-50-2, 256 px, 300 epochs, on a GPU with AMP), then a table per dataset and the paper's published
# numbers beside ours (pixel AP is its headline: 77.4 on MVTec AD, 72.5 on KolektorSDD2).
#
#   experiments/adps_paper.sh MVTEC KSDD KSDD2 [overrides]
#   experiments/adps_paper.sh /data/mvtec /data/ksdd /data/ksdd2 logger=wandb
#
# MVTEC, KSDD, KSDD2: the extracted datasets (MVTec AD's category folders; KolektorSDD's kos01 ... kos50;
# KolektorSDD2's train/ and test/). The data of every run is checked before the first starts.
# Overrides: Hydra overrides for every run, after the script's own (the last value of a key wins),
# e.g. trainer=cpu, backbone=resnet18, max_epochs=10, seed=0,1,2.
# OUT: where everything goes (default outputs/adps_paper/<time>):
#   $OUT/{mvtec,ksdd,ksdd2}/<job>/           a run folder a category (metrics.json once finished)
#   $OUT/{mvtec,ksdd,ksdd2}/results.md, .csv  the dataset's table, a row a category
#   $OUT/paper_adps.md, .csv                   ours beside the paper's numbers (MVTec AD and KolektorSDD2)
# The same at toy size on replicas of the three datasets: tests/test_rehearsal.py.
set -euo pipefail
MVTEC=${1:?path to MVTec AD}; KSDD=${2:?path to KolektorSDD}; KSDD2=${3:?path to KolektorSDD2}; shift 3
OUT=${OUT:-outputs/adps_paper/$(date +%Y-%m-%d_%H-%M-%S)}
CATEGORIES=bottle,cable,capsule,carpet,grid,hazelnut,leather,metal_nut,pill,screw,tile,toothbrush,transistor,wood,zipper
ON_MVTEC=(experiment=adps_paper dataset=mvtec dataset.root="$MVTEC" category=$CATEGORIES hydra.sweep.dir="$OUT/mvtec" "$@")
ON_KSDD=(experiment=adps_paper dataset=ksdd dataset.root="$KSDD" hydra.sweep.dir="$OUT/ksdd" "$@")
ON_KSDD2=(experiment=adps_paper dataset=ksdd2 dataset.root="$KSDD2" hydra.sweep.dir="$OUT/ksdd2" "$@")
adkd check "${ON_MVTEC[@]}" -- "${ON_KSDD[@]}" -- "${ON_KSDD2[@]}"
python -m adkd.run -m "${ON_MVTEC[@]}"
python -m adkd.run -m "${ON_KSDD[@]}"
python -m adkd.run -m "${ON_KSDD2[@]}"
# Each dataset's table shows the metrics its papers report (DATASET_METRICS in adkd/report/tables.py);
# MVTec AD's adds pixel AP, ADPS's headline there, of which the paper printed only the mean.
adkd report "$OUT/mvtec" --metrics image_auroc,pixel_auroc,pixel_aupro,pixel_ap
adkd report "$OUT/ksdd"
adkd report "$OUT/ksdd2"
adkd report "$OUT" --paper adps
