#!/usr/bin/env bash
# Rebuilds the browser artifacts (SDK and web app) from source and fails if they differ from the committed
# ones: the files a node embeds must be exactly what `npm run build` makes from the sources in the tree.
# Needs `npm ci` to have run at the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=(clients/js/dist web/dist)
npm run --silent build
if ! git diff --exit-code --stat -- "${DIST[@]}"; then
  echo "check-dist: the committed dist files are out of date: run 'npm run build' and commit the result" >&2
  exit 1
fi
untracked=$(git ls-files --others --exclude-standard -- "${DIST[@]}")
if [ -n "$untracked" ]; then
  echo "check-dist: built files not committed: $untracked" >&2
  exit 1
fi
echo "check-dist: dist files are up to date"
