#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on its seed corpus (fuzz/corpus/<target>, read only: new inputs go to a
# scratch corpus under the target dir). Stable toolchain: no sanitizer, and RUSTC_BOOTSTRAP=1 for the -Z flags
# cargo-fuzz passes. Fails on the first crash; the input is left in fuzz/artifacts/<target>/.
# Usage: fuzz/run.sh [seconds per target, default 20] [target...]
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelope call_row bitrix_form settings audio_probe)

export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$PWD/../target}/fuzz"
scratch="$target_dir/corpus"

cargo fuzz build --sanitizer none --target-dir "$target_dir"
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "==> fuzz $t for ${secs}s"
  cargo fuzz run --sanitizer none --target-dir "$target_dir" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=1024 -print_final_stats=1
done
