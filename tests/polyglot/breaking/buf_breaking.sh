#!/usr/bin/env bash
# Fails when proto/ (as it is in the working tree) is not wire- and
# source-compatible with the published API, using the FILE rules of
# proto/buf.yaml.
#
# What "published" means, in order:
#   1. The newest git tag matching v* (once releases exist, only released
#      API is frozen; unreleased additions on main may still change).
#   2. Otherwise main's previous commit, HEAD~1 (first parent, so for a merge
#      commit it is main before the merge). This catches a breaking change
#      committed in HEAD, which is what CI checks out.
#   3. Additionally HEAD itself, when the working tree's proto/ differs from
#      it: this catches an uncommitted edit that changes something HEAD only
#      just added (invisible against HEAD~1, where it did not exist yet).
# In a single-commit repository there is no earlier API: we check against HEAD
# only and say so. A shallow clone hides the history that exists, so there
# the test fails (fetch more history) rather than pass vacuously; so does a
# directory outside git. BUF_BREAKING_AGAINST=<buf input> (a directory, or
# `.git#tag=v1.2.0,subdir=proto`) overrides all of this.
#
# Usage: buf_breaking.sh <repo root>
set -euo pipefail

root="${1:?usage: buf_breaking.sh <repo root>}"
cd "$root"
buf="$root/node_modules/.bin/buf"
if [ ! -x "$buf" ]; then
  echo "buf_breaking: $buf not found; run scripts/dev.sh deps (npm ci)" >&2
  exit 1
fi
if [ -n "${BUF_BREAKING_AGAINST:-}" ]; then
  exec "$buf" breaking proto --against "$BUF_BREAKING_AGAINST"
fi
if ! git rev-parse --verify --quiet HEAD >/dev/null; then
  echo "buf_breaking: $root is not a git checkout with commits; nothing to compare against" >&2
  exit 1
fi

# Pairs of "label sha".
baselines=()
tag="$(git tag --list 'v*' --sort=-v:refname | head -n 1)"
if [ -n "$tag" ]; then
  baselines+=("tag:$tag $(git rev-parse "$tag^{commit}")")
elif prev="$(git rev-parse --verify --quiet 'HEAD~1^{commit}')"; then
  baselines+=("HEAD~1 $prev")
elif [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  echo "buf_breaking: shallow clone, main's previous commit is missing;" \
       "run 'git fetch --deepen=1' (CI: fetch-depth 0 or 2)" >&2
  exit 1
else
  echo "buf_breaking: no HEAD~1 (first commit); checking against HEAD only" >&2
fi
if [ -z "$tag" ] && { [ "${#baselines[@]}" -eq 0 ] || ! git diff --quiet HEAD -- proto; }; then
  baselines+=("HEAD $(git rev-parse HEAD)")
fi

status=0
for b in "${baselines[@]}"; do
  label="${b% *}"
  sha="${b#* }"
  against=".git#ref=$sha,subdir=proto"
  if "$buf" breaking proto --against "$against"; then
    echo "buf_breaking: proto/ is compatible with $label ($sha)"
  else
    echo "buf_breaking: proto/ BREAKS compatibility with $label ($sha)." >&2
    echo "  For an intentional breaking change, add a new package (videogen.v2)" >&2
    echo "  next to videogen.v1 instead of editing v1; see README." >&2
    status=1
  fi
done
exit "$status"
