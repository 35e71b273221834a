#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the end-to-end tests
# with real nginx + php-fpm + extension + agent + collector on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo build"
cargo build --workspace
echo "==> npm ci (tests/console: playwright-core, drives Debian's chromium)"
(cd tests/console && npm ci --no-audit --no-fund)
echo "==> cargo test"
cargo test --workspace
