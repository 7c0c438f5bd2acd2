#!/usr/bin/env bash
# Fuzzes every loader of untrusted input with cargo-fuzz (libFuzzer, AddressSanitizer).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 600 s, every target)
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Targets run one after another; new interesting inputs are
# added to fuzz/corpus/TARGET/ (commit them: the test suite replays the corpus), and a
# crash leaves its input in fuzz/artifacts/TARGET/: copy it into fuzz/corpus/TARGET/ as
# a regression test once fixed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(hw_spec lut_table model_file idx cifar safetensors_model)
fi
for target in "${targets[@]}"; do
    echo "== $target: ${seconds} s"
    # 2 GiB RSS limit: a loader that allocates what an input merely claims fails here.
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -max_len=65536 -timeout=20 -print_final_stats=1
done
