#!/usr/bin/env bash
# Builds, on a machine with Rust (no GPU or CUDA toolkit needed), everything tools/gpu-check.sh
# runs on a GPU machine that has the CUDA 13 runtime but no Rust toolchain: the release binary
# and the test executables, built with `--features cuda`, copied into gpu-bundle/ with a
# manifest (one line per test executable: `<target kind> <target name> <file>`).
set -euo pipefail
cd "$(dirname "$0")/.."

out=gpu-bundle
rm -rf "$out"
mkdir -p "$out/tests"

echo "build-gpu-bundle: building the release binary (--features cuda)"
cargo build --release --features cuda --bin moe-offload
cp target/release/moe-offload "$out/moe-offload"

echo "build-gpu-bundle: building the test executables (--features cuda)"
cargo test --release --features cuda --no-run --message-format=json >"$out/cargo-test.json"

# Each compiler-artifact with an executable and profile.test = true is a test binary.
jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
       | "\(.target.kind[0]) \(.target.name) \(.executable)"' "$out/cargo-test.json" |
    while read -r kind name exe; do
        dest="tests/${name}-${kind}"
        cp "$exe" "$out/$dest"
        echo "$kind $name $dest" >>"$out/manifest.txt"
    done
rm "$out/cargo-test.json"

# Debug info (profile.release has debug = 1) is not needed on the GPU machine; stripping keeps the
# bundle small enough to carry.
if command -v strip >/dev/null; then
    strip "$out/moe-offload" "$out"/tests/*
fi

[ -s "$out/manifest.txt" ] || { echo "build-gpu-bundle: no test executables found" >&2; exit 1; }
git rev-parse HEAD >"$out/COMMIT" 2>/dev/null || echo unknown >"$out/COMMIT"
echo "build-gpu-bundle: done:"
cat "$out/manifest.txt"
du -sh "$out"
