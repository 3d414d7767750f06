#!/usr/bin/env bash
# ADPS's ablations (the paper's Tables IV-VII, and our readings of its text) and the reference
# methods, at budget=converged, 3 seeds, on MVTec-layout folders: one folder per category under
# DATA (e.g. the embedded textures, cells and an ELPV export). Runs JOBS at a time, each a
# separate `python -m adkd.run`; a run whose metrics.json exists is skipped, so the script can be
# run again after an interruption. Then: adkd report OUT (one column per label)
#
#   experiments/adps_ablations.sh DATA OUT [JOBS] [PART] [extra overrides...]
#   PART: ablations | methods | all (default)
set -euo pipefail
DATA=${1:?data folder}; OUT=${2:?output folder}; JOBS=${3:-4}; PART=${4:-all}; shift $(( $# < 4 ? $# : 4 ))
PIXEL_SETS=(${PIXEL_SETS:-brick grass gravel cells})
ALL_SETS=(${ALL_SETS:-brick grass gravel cells elpv})
SEEDS=(${SEEDS:-0 1 2})

declare -A ABLATIONS=(
  [adps]=""
  [adps-k1]="method.network.k=1" [adps-k2]="method.network.k=2" [adps-k8]="method.network.k=8"
  [adps-stage0]="method.network.patch_stages=[0]" [adps-stages-all]="method.network.patch_stages=null"
  [adps-diff]="method.network.wmb=diff" [adps-concat]="method.network.wmb=concat" [adps-nopsm]="method.network.psm=false"
  [adps-wo-s]="method.network.without=student" [adps-wo-t]="method.network.without=teacher"
  [adps-mse]="method.network.similarity=mse" [adps-detach]="method.network.detach=true" [adps-tinit]="method.network.student_init=teacher"
)
jobs() {  # one line per run: <run folder> <overrides...>; seed by seed (methods first), so a cut-short run has whole seeds
  for seed in "${SEEDS[@]}"; do
    if [[ $PART == methods || $PART == all ]]; then
      for method in $(adkd methods); do for set in "${ALL_SETS[@]}"; do
        echo "$OUT/$method/$set/$seed method=$method label=$method category=$set seed=$seed"
      done; done
    fi
    if [[ $PART == ablations || $PART == all ]]; then
      for label in "${!ABLATIONS[@]}"; do for set in "${PIXEL_SETS[@]}"; do
        [[ $label == adps && $PART == all ]] && continue  # a method run, above
        echo "$OUT/$label/$set/$seed method=adps label=$label category=$set seed=$seed ${ABLATIONS[$label]}" | sed "s/ *$//"
      done; done
    fi
  done
}
one() {  # run folder, overrides...
  local dir=$1; shift
  [[ -f $dir/metrics.json ]] && return 0
  python -m adkd.run dataset=folder dataset.root="$DATA" image_size=128 budget=converged logger=csv \
    dataset.num_workers=0 num_figures=0 hydra.run.dir="$dir" "$@" $EXTRA > "$dir.log" 2>&1 \
    && rm "$dir.log" || echo "failed: $dir (see $dir.log)" >&2
}
export -f one; export DATA EXTRA="$*"
mkdir -p "$OUT"
jobs | xargs -P "$JOBS" -L 1 bash -c 'mkdir -p "$(dirname "$0")"; one "$0" "$@"'
