#!/usr/bin/env bash
# Builds the Debian package b24sense_<version>-1_<arch>.deb: the binary, then the man pages and shell completions
# that binary generates (b24sense man --dir, b24sense completions), then `cargo deb --no-build`.
# Prints the package's path as its last line. Uses CARGO_TARGET_DIR when set (CI), else ./target.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

cargo build --release --locked -p b24sense

bin="$CARGO_TARGET_DIR/release/b24sense"
gen="$CARGO_TARGET_DIR/release/packaging"   # cargo-deb's assets call it target/release/packaging
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
"$bin" man --dir "$gen/man"
gzip -9n "$gen"/man/*.1   # Debian policy; cargo-deb leaves files from the target dir as they are
"$bin" completions bash >"$gen/completions/b24sense"
"$bin" completions zsh >"$gen/completions/_b24sense"
"$bin" completions fish >"$gen/completions/b24sense.fish"

mkdir -p "$CARGO_TARGET_DIR/debian"
rm -f "$CARGO_TARGET_DIR"/debian/b24sense_*.deb
cargo deb -p b24sense --no-build --locked --output "$CARGO_TARGET_DIR/debian/" >&2
ls "$CARGO_TARGET_DIR"/debian/b24sense_*.deb
