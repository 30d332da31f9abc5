#!/usr/bin/env bash
# Builds shipit as one statically linked (static-pie) Linux binary:
#   dist/shipit-<target> and dist/shipit-<target>.sha256 (`sha256sum -c` format).
# Usage: scripts/dist.sh [TARGET]   (default: the host's target, from `rustc -vV`)
#
# The default target is glibc's, linked with `+crt-static` (static-pie): the musl target's
# std cannot be installed everywhere this runs. Other Linux targets are passed to cargo as
# given, with the same flag and the same check. `--target` is always given, so the flag applies to this build only: the normal
# `cargo build`/`cargo test` artifacts (target/debug, target/release) stay untouched.
# macOS binaries are built by the release workflow, not here.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "dist.sh: $*" >&2
  exit 1
}

host=$(rustc -vV | sed -n 's/^host: //p')
target=${1:-$host}
[ $# -le 1 ] || die "usage: scripts/dist.sh [TARGET]"
case "$target" in
  *-linux-*) ;;
  *) die "target \`$target\` is not Linux: this script builds static Linux binaries; macOS and other builds belong to the release workflow" ;;
esac

RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --bin shipit

built="target/$target/release/shipit"
[ -f "$built" ] || die "cargo reported success but \`$built\` does not exist"

# Static means no program interpreter (PT_INTERP): the kernel starts it with no ld.so and
# no shared library. `file` says "static-pie linked" or "statically linked" for such a binary.
kind=$(file -b "$built")
case "$kind" in
  *"static-pie linked"* | *"statically linked"*) ;;
  *) die "\`$built\` is not statically linked: $kind" ;;
esac
case "$kind" in
  *interpreter*) die "\`$built\` names a program interpreter: $kind" ;;
esac

mkdir -p dist
name="shipit-$target"
cp "$built" "dist/$name.tmp"
mv -f "dist/$name.tmp" "dist/$name"
(cd dist && sha256sum "$name" >"$name.sha256.tmp" && mv -f "$name.sha256.tmp" "$name.sha256")
(cd dist && sha256sum -c --quiet "$name.sha256") || die "checksum of \`dist/$name\` does not verify"

echo "dist/$name ($(stat -c %s "dist/$name") bytes): $kind" >&2
echo "dist/$name.sha256: $(cat "dist/$name.sha256")" >&2
