#!/usr/bin/env bash
# Regenerates the paper-comparison tables of docs/results.md: for each experiment, prepare the data,
# train stage 1 and the pix2pix baseline on the same CPU-time budget, build the exemplar library,
# evaluate both on the test split and write the HTML report.
#
# Usage: bash benchmarks/paper_tables.sh [RUNS_DIR] [EXPERIMENT ...]
#   experiments: shoes-sr shoes-edges faces-sr faces-edges cats-edges handbags-edges (default: all)
# Every step is skipped when its output already exists, so an interrupted run resumes; delete a
# folder in RUNS_DIR to redo that step. Budgets are CPU minutes of one thread (--clock cpu), so a
# busy machine slows the runs down but does not change what is trained.
# Costs on 2 cores (measured): evaluate ~20-40 min per experiment (100 inputs x 72 outputs,
# Inception for FID is the largest part); training = the budgets below.
set -euo pipefail
RUNS=${1:-runs}; shift || true
EXPERIMENTS=${*:-shoes-sr shoes-edges faces-sr faces-edges cats-edges handbags-edges}
DATA=${PIXELNN_SHARED_DATA:-../shared/data}
PIXELNN=${PIXELNN:-.venv/bin/pixelnn}
NUM_INPUTS=${NUM_INPUTS:-100}
mkdir -p "$RUNS"

prepare_args() {  # experiment -> source zip and prepare options
  case $1 in
    shoes-sr)       echo "$DATA/ut-zap50k-images-subset.zip --task superres" ;;
    shoes-edges)    echo "$DATA/ut-zap50k-images-subset.zip --task edges --hed-scale 1" ;;
    faces-sr)       echo "$DATA/celeba-10k.zip --task superres --fit crop" ;;
    faces-edges)    echo "$DATA/celeba-10k.zip --task edges --hed-scale 1 --fit crop --limit 5000" ;;
    cats-edges)     echo "$DATA/afhq-cat.zip --task edges --hed-scale 1" ;;
    handbags-edges) echo "$DATA/edges2handbags-subset.zip --task paired --direction BtoA" ;;
    *) echo "unknown experiment $1" >&2; exit 2 ;;
  esac
}
budget() {  # CPU minutes of stage 1, and of pix2pix (the same)
  case $1 in shoes-*) echo 30 ;; *) echo 15 ;; esac
}

for e in $EXPERIMENTS; do
  echo "=== $e"
  d="$RUNS/$e"; m="$RUNS/model-$e"; p="$RUNS/p2p-$e"; r="$RUNS/eval-$e"; b=$(budget "$e")
  [ -f "$d/dataset.json" ] || $PIXELNN prepare $(prepare_args "$e") --out "$d"
  [ -f "$m/metrics.json" ] || $PIXELNN train "$d" --out "$m" --minutes "$b" --clock cpu --threads 1 \
                                 --val-every 100 --sample-every 200
  [ -f "$m/library/library.json" ] || $PIXELNN index "$d" --model "$m"
  [ -f "$p/metrics.json" ] || $PIXELNN baseline-train "$d" --out "$p" --minutes "$b" --clock cpu --threads 1
  [ -f "$r/metrics.json" ] || $PIXELNN evaluate "$m" --split test --num-inputs "$NUM_INPUTS" --pix2pix "$p" \
                                 --threads 2 --out "$r"
done
$PIXELNN report $(for e in $EXPERIMENTS; do [ -f "$RUNS/eval-$e/metrics.json" ] && echo "$RUNS/eval-$e"; done) \
  --out "$RUNS/report"
echo "report: $RUNS/report/index.html"
