#!/usr/bin/env bash
# Builds the two guests of work-units/README.md with the commands the README
# gives and runs each through `formic exec`: both must print the sum of their
# input. Needs clang, lld and wasi-libc (Debian: apt install clang lld
# wasi-libc libclang-rt-14-dev-wasm32) and `rustup target add wasm32-wasip1`;
# not part of CI for that reason. Usage: work-units/guests/check.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo build --quiet --manifest-path "$root/Cargo.toml" -p formic-node
formic="$root/target/debug/formic"

clang --target=wasm32-wasi -O2 -Wl,--strip-all "$here/c/sum.c" -o "$out/sum-c.wasm"
cargo build --quiet --release --target wasm32-wasip1 \
    --manifest-path "$here/rust/Cargo.toml" --target-dir "$out/rust"
cp "$out/rust/wasm32-wasip1/release/sum.wasm" "$out/sum-rust.wasm"

for guest in sum-c sum-rust; do
    got="$(echo 1 2 3 40 | "$formic" exec "$out/$guest.wasm" --input - 2>/dev/null)"
    if [ "$got" != "46" ]; then
        echo "$guest printed '$got', expected 46" >&2
        exit 1
    fi
    echo "$guest: ok"
done
