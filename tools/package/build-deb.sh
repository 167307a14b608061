#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installing cargo-deb first when
# it is missing) and prints the path of the .deb on stdout; progress goes
# to stderr. Extra arguments are passed to `cargo deb` (e.g. --no-build).
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
# cargo-deb builds `cargo build --release`, gzips the man page, writes
# /usr/share/doc/ekilibri/copyright and prints the package path last.
deb=$(cargo deb "$@" | tail -n 1)
if [ ! -f "$deb" ]; then
    echo "build-deb: cargo deb did not report a package (got: $deb)" >&2
    exit 1
fi
echo "build-deb: built in $((SECONDS - start)) s" >&2
echo "$deb"
