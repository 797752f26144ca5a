#!/usr/bin/env bash
# GPU check for an H100/H200 machine with the CUDA 13 runtime and driver but NO Rust toolchain.
# It runs the prebuilt binaries of gpu-bundle/ (made by tools/build-gpu-bundle.sh on a machine
# with Rust): the GPU tests (a missing GPU is a failure here, not a skip), then generates a
# 4-layer Mixtral-shaped bf16 model (~11 GB, in a temp dir) and benchmarks host→device
# transfer and offloaded decode on it, and writes a markdown table to bench-results/<date>-<gpu>.md.
# Target: under 5 minutes. Any failure stops the script with a non-zero exit.
#
# Environment: GPU_BUNDLE (default: gpu-bundle/ next to tools/), RESULTS_DIR (default:
# bench-results/), WORK_DIR (where the model is generated; default: a temp dir).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bundle="${GPU_BUNDLE:-$root/gpu-bundle}"
results="${RESULTS_DIR:-$root/bench-results}"
bin="$bundle/moe-offload"

fail() {
    echo "gpu-check: FAILED: $*" >&2
    exit 1
}
trap 'echo "gpu-check: FAILED (line $LINENO, exit $?)" >&2' ERR

# libcublas and libnvrtc are not in the linker cache on these machines.
export LD_LIBRARY_PATH="/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# GPU tests skip without a device elsewhere; here a missing device must fail.
export MOE_OFFLOAD_REQUIRE_GPU=1

[ -x "$bin" ] || fail "no $bin: run tools/build-gpu-bundle.sh on a machine with Rust first"
[ -s "$bundle/manifest.txt" ] || fail "no $bundle/manifest.txt"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver"

start=$SECONDS
nvidia-smi
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)"
case "$gpu_name" in
    *H200*) gpu=H200 ;;
    *H100*) gpu=H100 ;;
    *) gpu="$(echo "$gpu_name" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')" ;;
esac
echo "gpu-check: $gpu_name (driver $driver), bundle commit $(cat "$bundle/COMMIT" 2>/dev/null || echo unknown)"

work="${WORK_DIR:-}"
if [ -z "$work" ]; then
    work="$(mktemp -d "${TMPDIR:-/tmp}/moe-gpu-check.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

# --- 1. GPU tests -------------------------------------------------------------------------------
# The CUDA integration tests and the library's unit tests of the CUDA module (other test
# executables need the source tree's golden files and run in CI instead).
tests_md=""
while read -r kind name file; do
    case "$kind:$name" in
        test:cuda | test:cuda_engine) filter=() ;;
        lib:moe_offload) filter=(backend::cuda) ;;
        *) continue ;;
    esac
    echo "gpu-check: running $file ${filter[*]:-}"
    t0=$SECONDS
    (cd "$root" && "$bundle/$file" "${filter[@]}" --test-threads=4) | tee "$work/test-$name.log"
    summary="$(grep -E '^test result:' "$work/test-$name.log" | tail -n1)"
    grep -q 'skipped: no usable CUDA device' "$work/test-$name.log" && fail "$name: a GPU test was skipped"
    tests_md+="| $kind $name | ${summary#test result: } | $((SECONDS - t0)) s |"$'\n'
done <"$bundle/manifest.txt"
[ -n "$tests_md" ] || fail "the manifest lists no CUDA test executable"

# --- 2. Model -------------------------------------------------------------------------------------
model="$work/mixtral-4l"
if [ ! -f "$model/config.json" ]; then
    t0=$SECONDS
    "$bin" gen --preset mixtral-8x7b-shape --layers 4 --out "$model"
    echo "gpu-check: generated $model in $((SECONDS - t0)) s"
fi
"$bin" inspect --model "$model"

# --- 3. Transfer benchmark ------------------------------------------------------------------------
t0=$SECONDS
"$bin" bench transfer --model "$model" --path all --threads 1,4,8 --iters 2 | tee "$work/transfer.md"
transfer_s=$((SECONDS - t0))

# --- 4. Decode benchmark --------------------------------------------------------------------------
# Decode tokens/s of the offloaded engine on the GPU at 100/50/25/12.5% of the expert bytes,
# LRU, LRU + gate prefetch and the naive method (plus the resident reference, whose weights
# are uploaded per call), with the transfer-bound limit at each row's traffic against the
# pinned ceiling measured above. 24 steps × 4 sequences: ~8 GB of misses per step at most,
# about a minute in all on an H100/H200.
ceiling="$(grep -o 'pinned ceiling [0-9.]* GB/s' "$work/transfer.md" | grep -o '[0-9][0-9.]*' | head -n1 || true)"
[ -n "$ceiling" ] || fail "no pinned ceiling in the transfer report"
t0=$SECONDS
"$bin" bench decode --model "$model" --device cuda --transfer auto \
    --budgets 100%,50%,25%,12.5% --steps 24 --batch 4 --no-lfu --ceiling-gbps "$ceiling" |
    tee "$work/decode.md"
decode_s=$((SECONDS - t0))

# --- 5. Report ------------------------------------------------------------------------------------
mkdir -p "$results"
out="$results/$(date -u +%Y-%m-%d)-$gpu.md"
{
    echo "# moe-offload GPU check: $gpu_name"
    echo
    echo "Date $(date -u '+%Y-%m-%d %H:%M UTC'), driver $driver, commit $(cat "$bundle/COMMIT" 2>/dev/null || echo unknown),"
    echo "model: \`gen --preset mixtral-8x7b-shape --layers 4\` (bf16). Total time $((SECONDS - start)) s."
    echo
    echo "## GPU tests"
    echo
    echo "| executable | result | time |"
    echo "|---|---|---:|"
    printf '%s' "$tests_md"
    echo
    echo "## Host→device transfer (${transfer_s} s)"
    echo
    cat "$work/transfer.md"
    echo
    echo "## Decode (${decode_s} s; 24 steps × 4 sequences, bound = tokens / (bytes moved / ${ceiling} GB/s))"
    echo
    cat "$work/decode.md"
} >"$out"
echo "gpu-check: wrote $out"
elapsed=$((SECONDS - start))
if [ "$elapsed" -gt 300 ]; then
    echo "gpu-check: warning: took ${elapsed} s, above the 5-minute target" >&2
fi
echo "gpu-check: OK in ${elapsed} s"
