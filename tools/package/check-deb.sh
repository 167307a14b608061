#!/usr/bin/env bash
# Builds the Debian package (tools/package/build-deb.sh) and checks it:
# the files it installs, the conffiles, the control fields, the man page,
# and the unit with `systemd-analyze verify` when systemd-analyze exists.
# Exits non-zero, naming what is wrong, on the first failed check.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS

fail() {
    echo "check-deb: FAIL: $*" >&2
    exit 1
}

deb=$(tools/package/build-deb.sh "$@")
echo "check-deb: checking $deb" >&2

contents=$(dpkg-deb -c "$deb")
for path in \
    ./usr/bin/ekilibri \
    ./etc/ekilibri/ekilibri.toml \
    ./lib/systemd/system/ekilibri.service \
    ./usr/share/man/man1/ekilibri.1.gz \
    ./usr/share/doc/ekilibri/README \
    ./usr/share/doc/ekilibri/copyright \
    ./usr/share/bash-completion/completions/ekilibri \
    ./usr/share/zsh/vendor-completions/_ekilibri \
    ./usr/share/fish/vendor_completions.d/ekilibri.fish; do
    grep -qE " ${path//./\\.}\$" <<<"$contents" || fail "$path is not in the package:
$contents"
done
grep -qE '^-rwxr-xr-x .* \./usr/bin/ekilibri$' <<<"$contents" || fail "/usr/bin/ekilibri is not mode 755"

info=$(dpkg-deb -I "$deb")
grep -qE '^ +[0-9]+ bytes, +[0-9]+ lines? +conffiles' <<<"$info" || fail "no conffiles in the control archive:
$info"
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
[ "$conffiles" = "/etc/ekilibri/ekilibri.toml" ] || fail "conffiles is '$conffiles', expected /etc/ekilibri/ekilibri.toml"
for field in 'Package: ekilibri' 'Section: net' 'Priority: optional' 'Depends: libc6' 'Maintainer: '; do
    grep -q "^ $field" <<<"$info" || fail "control lacks '$field':
$info"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"

# The packaged binary runs and reports its version.
version=$("$work/root/usr/bin/ekilibri" --version)
grep -qE '^ekilibri [0-9]+\.[0-9]+\.[0-9]+ \((git )?[0-9a-f]{7,}\)$' <<<"$version" || fail "unexpected --version output: $version"
# The packaged configuration passes --check with the packaged binary
# (errors, e.g. too many workers for this host, fail; warnings are shown).
"$work/root/usr/bin/ekilibri" -f "$work/root/etc/ekilibri/ekilibri.toml" --check >&2 || fail "the packaged ekilibri.toml does not pass --check"

# The completions are scripts for their shell that offer the options.
grep -q 'complete -F _ekilibri' "$work/root/usr/share/bash-completion/completions/ekilibri" \
    || fail "the bash completion does not register _ekilibri"
grep -q '^#compdef ekilibri' "$work/root/usr/share/zsh/vendor-completions/_ekilibri" \
    || fail "the zsh completion lacks #compdef ekilibri"
grep -q 'complete -c ekilibri' "$work/root/usr/share/fish/vendor_completions.d/ekilibri.fish" \
    || fail "the fish completion does not complete ekilibri"
if command -v bash >/dev/null; then
    bash -n "$work/root/usr/share/bash-completion/completions/ekilibri" || fail "the bash completion does not parse"
fi

# The man page is valid roff with the expected sections.
man_text=$(zcat "$work/root/usr/share/man/man1/ekilibri.1.gz")
for section in NAME SYNOPSIS DESCRIPTION OPTIONS 'ADMIN API' METRICS LOGS FILES SIGNALS 'EXIT STATUS' 'SEE ALSO'; do
    grep -q "^\.SH \"\?$section\"\?$" <<<"$man_text" || fail "man page lacks section $section"
done
if command -v groff >/dev/null; then
    warnings=$(groff -man -Tutf8 -ww -z 2>&1 <<<"$man_text" || true)
    [ -z "$warnings" ] || fail "groff warnings in the man page: $warnings"
fi

# The unit, as installed, with ExecStart pointing at the extracted binary
# (verify checks that the executable exists) and the man page on MANPATH.
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$work/unit"
    sed "s#/usr/bin/ekilibri#$work/root/usr/bin/ekilibri#g" \
        "$work/root/lib/systemd/system/ekilibri.service" >"$work/unit/ekilibri.service"
    # verify exits 0 on unknown keys and only warns: any output is a failure.
    verify=$(MANPATH="$work/root/usr/share/man:" systemd-analyze verify "$work/unit/ekilibri.service" 2>&1) \
        || fail "systemd-analyze verify rejected the unit: $verify"
    [ -z "$verify" ] || fail "systemd-analyze verify warns: $verify"
    echo "check-deb: systemd-analyze verify: ok" >&2
else
    echo "check-deb: NOTE: systemd-analyze not installed; the unit was not verified (apt-get install systemd)" >&2
fi

echo "check-deb: ok: $deb ($((SECONDS - start)) s)" >&2
