#!/usr/bin/env bash
# The realistic page's cost on php-fpm behind nginx (the issue's setup),
# counted in instructions by callgrind, which stays stable on a noisy
# machine where wall-clock CPU time does not: one php-fpm worker
# (pm = static, one child) runs under callgrind and serves
# tests/php/bench_page.php N times through nginx (10 PDO-MySQL statements,
# a fetch of 100 rows, one curl call to nginx); per request =
# (I(N=41) - I(N=1)) / 40 of the worker process, with and without the
# extension. Counts the worker's user-space instructions only (nginx,
# MariaDB and the kernel do the same work either way).
#
# SONDE_SO: the extension (default: the release build). SONDE_INI: extra
# settings for the run with it (e.g. "sonde.propagate=0", space-separated).
# SONDE_SOCKET: an
# agent socket, to count the live path (ring and scoreboard); by default
# no agent, so records are built and their send dropped, as in
# bench/page_cost.sh. Needs nginx, php8.2-fpm, valgrind, curl and the
# local MariaDB.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
FPM=$(command -v php-fpm8.2 || echo /usr/sbin/php-fpm8.2)
WEB=${WEB_PORT:-18391}
FPM_PORT=${FPM_PORT:-18392}
D=$(mktemp -d)
cleanup() {
  if [ -f "$D/nginx.pid" ]; then kill "$(cat "$D/nginx.pid")" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then rm -rf "$KEEP"; cp -r "$D" "$KEEP"; fi
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/tmp"
start_nginx "$(bench_server "$WEB" "$FPM_PORT")"

# Instructions of the worker after serving N requests.
count() { # args: with|without, N
  local ext=() out="$D/cg.$1.$2"
  if [ "$1" = with ]; then
    ext=(-d "extension=$SO")
    for setting in ${SONDE_INI:-}; do ext+=(-d "$setting"); done
  fi
  mkdir -p "$out"
  fpm_conf fpm "$FPM_PORT" 1
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
    "$FPM" --nodaemonize --fpm-config "$D/fpm.conf" --allow-to-run-as-root \
    -d opcache.enable=1 "${ext[@]}" >"$D/fpm.log" 2>&1 &
  local master=$!
  wait_port "$FPM_PORT"
  for _ in $(seq 1 "$2"); do
    curl -sf -o /dev/null "http://127.0.0.1:$WEB/bench_page.php"
  done
  kill -QUIT "$master"
  wait "$master" || true
  # The worker's file is the one not named after the master.
  local f
  for f in "$out"/cg.*; do
    [ "$f" = "$out/cg.$master" ] && continue
    sed -n 's/^summary: \([0-9]*\).*/\1/p; s/^totals: \([0-9]*\).*/\1/p' "$f" | head -1
  done
}
base=$(per_request count without 40)
with=$(per_request count with 40)
report_per_request "$base" "$with" "php-fpm worker "
