#!/usr/bin/env bash
# The steps of the GitHub Action (action.yml at the repository root), kept in a file so that
# they are linted with ShellCheck. Every value comes in through the environment, never spliced into the
# script text, so an input cannot inject shell.
#
#   scripts/action.sh install   puts a shipit binary into $RUNNER_TEMP/shipit/bin:
#                               the release binary for this runner, checked against its
#                               published .sha256, or (no such release or binary) built from
#                               the action's own source with cargo
#   scripts/action.sh run       runs shipit with --json into a report file; exits with
#                               shipit's exit code
#
# Outputs go to $GITHUB_OUTPUT: install: `bin`, `version`, `source`; run: `report`,
# `exit-code`.
set -euo pipefail

fail() {
  echo "::error title=shipit action::$*" >&2
  exit 1
}

output() {
  echo "$1=$2" >>"${GITHUB_OUTPUT:-/dev/null}"
}

# The Rust target of this runner, as the release names its binaries.
runner_target() {
  local os arch
  os=$(uname -s)
  arch=$(uname -m)
  case "$arch" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) return 1 ;;
  esac
  case "$os" in
    Linux) echo "$arch-unknown-linux-gnu" ;;
    Darwin) echo "$arch-apple-darwin" ;;
    *) return 1 ;;
  esac
}

sha256_of() {
  if command -v sha256sum >/dev/null; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# The action's repository and ref: the step's env (github.action_repository/action_ref),
# or else read from where the runner checked the action out: _actions/<owner>/<repo>/<ref>.
action_origin() {
  local repo="${ACTION_REPOSITORY:-}" ref="${ACTION_REF:-}" path="${GITHUB_ACTION_PATH:-}"
  if [ -z "$repo" ] && [[ "$path" == */_actions/*/*/* ]]; then
    local rest="${path#*/_actions/}"
    repo="${rest%%/*}/$(echo "$rest" | cut -d/ -f2)"
    ref=$(echo "$rest" | cut -d/ -f3)
  fi
  echo "$repo" "$ref"
}

# The release tag to download: the `version` input (`latest`, `vX.Y.Z` or `X.Y.Z`); else the
# action's ref when it is a release tag; for a major tag (`v1`), the newest `v1.*` release.
# Prints nothing when no release applies (a branch, a commit, a local `uses: ./`).
release_tag() {
  local repo="$1" ref="$2" version="${ACTION_VERSION:-}"
  if [ -n "$version" ]; then
    case "$version" in
      latest) latest_tag "$repo" "" ;;
      v*) echo "$version" ;;
      *) echo "v$version" ;;
    esac
    return
  fi
  if [[ "$ref" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
    echo "$ref"
  elif [[ "$ref" =~ ^v[0-9]+$ ]]; then
    latest_tag "$repo" "$ref."
  fi
}

# The newest published release's tag of `repo` whose tag starts with `prefix` (the API lists
# releases newest first; drafts are not listed without push access).
latest_tag() {
  local repo="$1" prefix="$2" auth=()
  [ -n "$repo" ] || return 0
  [ -z "${ACTION_TOKEN:-}" ] || auth=(-H "Authorization: Bearer $ACTION_TOKEN")
  curl -fsSL --retry 3 ${auth[@]+"${auth[@]}"} -H "Accept: application/vnd.github+json" \
    "${GITHUB_API_URL:-https://api.github.com}/repos/$repo/releases?per_page=100" 2>/dev/null |
    grep -o '"tag_name": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' |
    awk -v prefix="$prefix" 'index($0, prefix) == 1 { print; exit }' || true
}

# Downloads the release binary for `target` into `dest` and checks it against the published
# .sha256 (sha256sum format). Returns 1 when the release or the binary is not there; exits
# when the checksum does not match.
download() {
  local repo="$1" tag="$2" target="$3" dest="$4"
  local base="${GITHUB_SERVER_URL:-https://github.com}/$repo/releases/download/$tag/shipit-$target"
  local tmp
  tmp=$(mktemp -d)
  if ! curl -fsSL --retry 3 -o "$tmp/shipit" "$base" ||
    ! curl -fsSL --retry 3 -o "$tmp/shipit.sha256" "$base.sha256"; then
    rm -rf "$tmp"
    return 1
  fi
  local expected actual
  expected=$(awk '{ print $1; exit }' "$tmp/shipit.sha256")
  [[ "$expected" =~ ^[0-9a-f]{64}$ ]] || fail "shipit-$target.sha256 of $tag holds no sha256"
  actual=$(sha256_of "$tmp/shipit")
  [ "$actual" = "$expected" ] ||
    fail "shipit-$target of $tag has sha256 $actual, its .sha256 says $expected: not used"
  echo "shipit-$target of $tag: sha256 $actual matches its .sha256" >&2
  chmod +x "$tmp/shipit"
  mv "$tmp/shipit" "$dest"
  rm -rf "$tmp"
}

install() {
  local root="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/shipit"
  local src="${GITHUB_ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}"
  mkdir -p "$root/bin"
  local repo ref tag target
  read -r repo ref < <(action_origin)
  tag=$(release_tag "$repo" "$ref")
  if target=$(runner_target) && [ -n "$tag" ] && [ -n "$repo" ]; then
    if download "$repo" "$tag" "$target" "$root/bin/shipit"; then
      output bin "$root/bin/shipit"
      output version "$tag"
      output source release
      return
    fi
    echo "no release binary shipit-$target in $repo $tag: building from source" >&2
  else
    echo "no release applies (action ref '${ref}', runner $(uname -sm)): building from source" >&2
  fi
  command -v cargo >/dev/null ||
    fail "no cargo to build shipit from source: install a Rust toolchain in an earlier step"
  cargo install --locked --path "$src" --root "$root"
  output bin "$root/bin/shipit"
  output version "$("$root/bin/shipit" --version | cut -d' ' -f2)"
  output source built
}

run() {
  local bin="${ACTION_BIN:?the install step names the binary}"
  local stage="${ACTION_STAGE:?the stage input is required}"
  local command="${ACTION_COMMAND:-deploy}"
  local report="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/shipit-$command-$stage.json"
  local argv=("$command" "$stage")
  [ -z "${ACTION_INVENTORY:-}" ] || argv+=(--inventory "$ACTION_INVENTORY")
  argv+=(--json)
  local extra=()
  # `args` is split on whitespace, like a shell would without quotes; no globbing, no eval.
  [ -z "${ACTION_ARGS:-}" ] || read -r -a extra <<<"$ACTION_ARGS"
  argv+=(${extra[@]+"${extra[@]}"})
  echo "shipit ${argv[*]}" >&2
  local code=0
  "$bin" "${argv[@]}" >"$report" || code=$?
  output report "$report"
  output exit-code "$code"
  exit "$code"
}

case "${1:-}" in
  install) install ;;
  run) run ;;
  *)
    echo "usage: scripts/action.sh install|run" >&2
    exit 2
    ;;
esac
