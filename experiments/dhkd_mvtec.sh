#!/usr/bin/env bash
# DHKD on every MVTec AD category, then the per-category table and the paper's published numbers beside ours
# (its image and pixel AUROC per category; reported means: image 99.3, pixel 98.6). The paper gives no recipe:
# this is ours (conf/method/dhkd.yaml: 256 px, 200 epochs, flow first then student), on a GPU with AMP.
#
#   experiments/dhkd_mvtec.sh MVTEC [overrides]
#   experiments/dhkd_mvtec.sh /data/mvtec backbone=wide_resnet50_2 logger=wandb
#
# MVTEC: the extracted MVTec AD (its category folders). The data of every run is checked before the first starts.
# Overrides: Hydra overrides for every run, after the script's own (the last value of a key wins), e.g.
# trainer=cpu (the script's trainer=gpu is one of its own), max_epochs=10, seed=0,1,2.
# OUT: where everything goes (default outputs/dhkd_mvtec/<time>):
#   $OUT/<job>/                  a run folder a category (metrics.json once finished)
#   $OUT/results.md, .csv        the table, a row a category (MVTec AD's metrics: DATASET_METRICS in adkd/report/tables.py)
#   $OUT/paper_dhkd.md, .csv     ours beside the paper's numbers, a cell a category
# The same at toy size on a replica of MVTec AD: tests/test_rehearsal.py.
set -euo pipefail
MVTEC=${1:?path to MVTec AD}; shift
OUT=${OUT:-outputs/dhkd_mvtec/$(date +%Y-%m-%d_%H-%M-%S)}
CATEGORIES=bottle,cable,capsule,carpet,grid,hazelnut,leather,metal_nut,pill,screw,tile,toothbrush,transistor,wood,zipper
ON_MVTEC=(method=dhkd dataset=mvtec dataset.root="$MVTEC" category=$CATEGORIES trainer=gpu hydra.sweep.dir="$OUT" "$@")
adkd check "${ON_MVTEC[@]}"
python -m adkd.run -m "${ON_MVTEC[@]}"
adkd report "$OUT"
adkd report "$OUT" --paper dhkd
