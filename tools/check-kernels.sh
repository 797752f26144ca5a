#!/usr/bin/env bash
# Checks the CUDA kernels without a GPU: compiles cuda/*.cu as C++ with the CUDA keywords
# stubbed (tools/kernel-emu.cpp) and runs known-answer checks of every kernel on the CPU.
# Catches syntax errors and indexing/arithmetic mistakes before a GPU run; NVRTC-specific
# problems still need tools/gpu-check.sh. Needs g++.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v g++ >/dev/null || { echo "check-kernels: g++ not found" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
g++ -std=c++17 -Wall -Wno-unused-function -Wno-uninitialized -O1 -I "$root/cuda" \
    "$root/tools/kernel-emu.cpp" -o "$tmp/kernel-emu"
"$tmp/kernel-emu"
