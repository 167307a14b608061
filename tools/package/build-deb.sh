#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installing cargo-deb first when
# it is missing) and prints the path of the .deb on stdout; progress goes
# to stderr. Extra arguments are passed to `cargo deb` (e.g. --no-build:
# reuse target/release/ekilibri as it is).
#
# The shell completions the package installs are generated here by the
# release binary itself (`ekilibri --completions SHELL`, a hidden flag), so
# they always match its options; hence the binary is built before
# `cargo deb --no-build`.
#
#   tools/package/build-deb.sh            # -> target/debian/ekilibri_X.Y.Z-1_amd64.deb
#
# Timings on 2 cores: installing cargo-deb ~3 min (once), the release build
# (lto = "fat") ~2 min.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: cargo-deb not found; running: cargo install cargo-deb --locked" >&2
    start=$SECONDS
    cargo install cargo-deb --locked >&2
    echo "build-deb: cargo-deb installed in $((SECONDS - start)) s" >&2
fi

start=$SECONDS
build=true
args=()
for a in "$@"; do
    if [ "$a" = --no-build ]; then build=false; else args+=("$a"); fi
done
if $build; then
    cargo build --release --bin ekilibri >&2
fi
mkdir -p target/completions
target/release/ekilibri --completions bash >target/completions/ekilibri.bash
target/release/ekilibri --completions zsh >target/completions/_ekilibri
target/release/ekilibri --completions fish >target/completions/ekilibri.fish
# cargo-deb gzips the man page, writes /usr/share/doc/ekilibri/copyright
# and prints the package path last.
deb=$(cargo deb --no-build ${args[@]+"${args[@]}"} | tail -n 1)
if [ ! -f "$deb" ]; then
    echo "build-deb: cargo deb did not report a package (got: $deb)" >&2
    exit 1
fi
echo "build-deb: built in $((SECONDS - start)) s" >&2
echo "$deb"
