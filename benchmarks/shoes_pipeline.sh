#!/usr/bin/env bash
# Reproduces docs/results.md on the shoes zip: prepare, train stage 1 (30 CPU-minutes per task),
# build the exemplar libraries, and measure stage 2 on 100 val photos with both pixel descriptors.
# Usage: bash benchmarks/shoes_pipeline.sh [RUNS_DIR] (default ./runs). Takes about 2.5 hours on 2 cores.
set -euo pipefail
RUNS=${1:-runs}
ZIP=${PIXELNN_SHARED_DATA:-../shared/data}/ut-zap50k-images-subset.zip
PY=${PYTHON:-.venv/bin/python}
PIXELNN=${PIXELNN:-.venv/bin/pixelnn}
mkdir -p "$RUNS"
$PIXELNN prepare "$ZIP" --task superres --out "$RUNS/shoes-sr" --overwrite
$PIXELNN prepare "$ZIP" --task edges --hed-scale 1 --out "$RUNS/shoes-edges" --overwrite
# The two trainings run side by side, one thread each (2 cores): 30 minutes of one core each.
$PIXELNN train "$RUNS/shoes-sr" --out "$RUNS/model-shoes-sr" --minutes 30 --threads 1 --val-every 100 --sample-every 200 &
$PIXELNN train "$RUNS/shoes-edges" --out "$RUNS/model-shoes-edges" --minutes 30 --threads 1 --val-every 100 --sample-every 200
wait
for t in sr edges; do
  $PIXELNN index "$RUNS/shoes-$t" --model "$RUNS/model-shoes-$t"
  for d in hypercolumn regressor; do
    $PY benchmarks/stage2_eval.py --model "$RUNS/model-shoes-$t" --data "$RUNS/shoes-$t" --n 100 \
        --descriptor $d --out "$RUNS/eval-$t-$d"
  done
  $PY benchmarks/stage2_speed.py --model "$RUNS/model-shoes-$t" --data "$RUNS/shoes-$t"
done
