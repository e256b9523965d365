#!/usr/bin/env bash
# Builds the `cairn` binary of the previous release, which the rolling
# upgrade test (e2e/tests/e2e/rolling_upgrade.rs) upgrades from and
# downgrades back to. The release and its commit are recorded in
# e2e/previous-release; the binary is built once from that commit in a
# temporary git worktree (with the fail points the e2e cluster needs) and
# cached at target/previous-release/<version>-<commit>/cairn, whose path
# this prints. Later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

read -r version commit < <(grep -v '^#' e2e/previous-release | grep -v '^[[:space:]]*$' | head -1)
if [ -z "${version:-}" ] || [ -z "${commit:-}" ]; then
  echo "e2e/previous-release names no release" >&2
  exit 1
fi
out="target/previous-release/$version-$commit"
if [ -x "$out/cairn" ]; then
  echo "$PWD/$out/cairn"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  # A shallow clone: fetch the history the release commit is in.
  git fetch --quiet --unshallow >&2 || true
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "commit $commit (Cairn $version) is not in this clone: the rolling upgrade test needs the history (git fetch --unshallow)" >&2
  exit 1
fi

tree=$(mktemp -d "${TMPDIR:-/tmp}/cairn-previous-release.XXXXXX")
cleanup() {
  git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"
  git worktree prune >/dev/null 2>&1 || true
}
trap cleanup EXIT
git worktree add --detach --quiet "$tree" "$commit"
# Its own target dir, removed once the binary is out: only the binary is
# cached (about 60 MB), not a second build tree.
build="$PWD/target/previous-release/build"
echo "building Cairn $version ($commit) for the rolling upgrade test" >&2
(cd "$tree" && CARGO_TARGET_DIR="$build" cargo build --locked --quiet -p cairn-shim --bin cairn --features cairn-shim/failpoints)
mkdir -p "$out"
cp "$build/debug/cairn" "$out/cairn.tmp"
mv "$out/cairn.tmp" "$out/cairn"
rm -rf "$build"
echo "$PWD/$out/cairn"
