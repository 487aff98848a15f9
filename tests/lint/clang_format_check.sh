#!/usr/bin/env bash
# Fails when clang-format would change any of the project's C++ sources.
set -euo pipefail
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.cc' '*.h')
[ "${#files[@]}" -gt 0 ] || { echo "no C++ sources found"; exit 1; }
clang-format --dry-run -Werror "${files[@]}"
echo "clang-format: ${#files[@]} files clean"
