#!/usr/bin/env bash
# Regenerates RESULTS.md: `approx bench train` (baseline vs accelerated vs float
# fine-tuning, from the same float weights) for every model, data set and hardware row.
#
#   scripts/fetch-data.sh mnist DATA/mnist
#   scripts/fetch-data.sh fashion-mnist DATA/fashion-mnist
#   scripts/results.sh DATA [RUNS]            (RUNS: default results-runs/)
#
# Settings (environment; defaults in brackets): TRAIN_IMAGES [all 60,000] fine-tuning
# images, PRETRAIN_IMAGES [all] float pretraining images, TEST_IMAGES [all 10,000],
# PRETRAIN_EPOCHS [2], EPOCHS [2], SCHEDULE [inject:1,accurate:1], BATCH [64],
# CALIBRATE_EVERY [REX-SC's max(steps per epoch / 5, 100)] steps between calibrations,
# TUNE_LR [none: one cosine decay over the run] learning rate each later phase restarts
# Adam at, MODELS
# [tinyconv/fashion-mnist tinyconv/mnist lenet5/mnist], HWS [the eight below]. Every
# finished row is kept in RUNS as JSON and skipped when the script runs again, so an
# interrupted run resumes; delete RUNS to start afresh. The table is written from
# whatever rows exist.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DATA_DIR [RUNS_DIR]" >&2; exit 2; }
data=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${2:-results-runs}
mkdir -p "$runs"
runs=$(cd "$runs" && pwd)

train_images=${TRAIN_IMAGES:-}
pretrain_images=${PRETRAIN_IMAGES:-}
test_images=${TEST_IMAGES:-}
pretrain_epochs=${PRETRAIN_EPOCHS:-2}
epochs=${EPOCHS:-2}
schedule=${SCHEDULE:-inject:1,accurate:1}
batch=${BATCH:-64}
tuning=()
[ -n "${CALIBRATE_EVERY:-}" ] && tuning=(--calibrate-every "$CALIBRATE_EVERY")
[ -n "${TUNE_LR:-}" ] && tuning+=(--tune-lr "$TUNE_LR")
groups=(${MODELS:-tinyconv/fashion-mnist tinyconv/mnist lenet5/mnist})
hws=(${HWS:-sc:len=32,acc=or1 sc:len=32,acc=or2 sc:len=64,acc=or1 sc:len=64,acc=or2 mult:design=drum6 mult:design=ssm4 analog fxp})

cargo build --release -p approx-cli --manifest-path "$root/Cargo.toml"
approx="$root/target/release/approx"

sizes=()
[ -n "$train_images" ] && sizes+=(--train-images "$train_images")
[ -n "$test_images" ] && sizes+=(--test-images "$test_images")
pretrain_sizes=()
[ -n "$pretrain_images" ] && pretrain_sizes+=(--train-images "$pretrain_images")
[ -n "$test_images" ] && pretrain_sizes+=(--test-images "$test_images")

for group in "${groups[@]}"; do
    model=${group%/*}
    set_name=${group#*/}
    dir="$runs/$model-$set_name"
    mkdir -p "$dir"
    if [ ! -f "$dir/float.safetensors" ]; then
        echo "== $group: float pretraining, $pretrain_epochs epochs"
        "$approx" -q pretrain --model "$model" --data "$set_name:$data/$set_name" "${pretrain_sizes[@]}" \
            --epochs "$pretrain_epochs" --batch "$batch" \
            --out "$dir/float.safetensors" --json "$dir/pretrain.json"
    fi
    for hw in "${hws[@]}"; do
        slug=$(echo "$hw" | tr ':=,' '_-_')
        [ -f "$dir/$slug.json" ] && continue
        echo "== $group on $hw"
        "$approx" -q bench train --model "$model" --data "$set_name:$data/$set_name" "${sizes[@]}" \
            --weights "$dir/float.safetensors" --hw "$hw" --epochs "$epochs" \
            --schedule "$schedule" --batch "$batch" "${tuning[@]}" \
            --out "$dir/$slug" --json "$dir/$slug.json"
    done
done

python3 "$root/scripts/results_table.py" "$runs" \
    "scripts/results.sh DATA $(basename "$runs")" "${groups[@]}" > "$root/RESULTS.md.tmp"
mv "$root/RESULTS.md.tmp" "$root/RESULTS.md"
echo "wrote $root/RESULTS.md"
