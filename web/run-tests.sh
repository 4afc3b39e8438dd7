#!/usr/bin/env bash
# The browser client's whole check, for CI (`bash web/run-tests.sh` from anywhere, as root on Debian):
#   1. Debian's chromium (installed with apt if missing; nothing downloads a browser of its own)
#   2. npm ci (exact versions from package-lock.json)
#   3. the committed dist files equal a fresh build (web/check-dist.sh)
#   4. the rookery binary: ROOKERY_BIN if set, else `cargo build --release --locked` (a no-op when up to date;
#      ROOKERY_PROFILE=debug builds and uses target/debug/rookery instead, which `cargo test` has just built)
#   5. the SDK's unit tests (node --test), then the browser tests in headless Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "run-tests: installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"

npm ci --no-audit --no-fund --loglevel=error
bash web/check-dist.sh

if [ -z "${ROOKERY_BIN:-}" ]; then
  # a no-op when the target dir is up to date (after `cargo test`, the debug binary is); the machine's shared
  # cargo lock keeps builds of other work trees from running at the same time
  if [ "${ROOKERY_PROFILE:-release}" = debug ]; then
    flock /tmp/cargo-build.lock cargo build --locked --bin rookery
    export ROOKERY_BIN="$PWD/target/debug/rookery"
  else
    flock /tmp/cargo-build.lock cargo build --release --locked --bin rookery
    export ROOKERY_BIN="$PWD/target/release/rookery"
  fi
fi

npm run --silent test:unit
npm run --silent test:browser
echo "run-tests: passed in $(( $(date +%s) - started )) s"
