#!/usr/bin/env bash
# Extension cost on a realistic page, counted in instructions (callgrind,
# stable on a noisy machine): tests/php/bench_page.php (10 PDO-MySQL
# statements, a fetch of 100 rows, one curl call) run T times by php-cgi,
# per request = (I(T=41) - I(T=1)) / 40, with and without the extension.
# Needs the local MariaDB. Counts user-space instructions of PHP only: the
# database's and the kernel's work are outside, as they are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
SO=${SONDE_SO:-$PWD/target/release/libsonde_php.so}
CGI=$(command -v php-cgi8.2 || command -v php-cgi)
export SERVER_PORT=1   # the page's curl call goes to a closed port
count() {
  local t=$1; shift
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$CGI" -q "$@" -T "$t" tests/php/bench_page.php 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_request() {
  local one many
  one=$(count 1 "$@"); many=$(count 41 "$@")
  echo $(( (many - one) / 40 ))
}
base=$(per_request)
with=$(per_request -d extension="$SO" -d sonde.agent_socket="${SONDE_SOCKET:-/nonexistent/agent.sock}")
echo "instructions per request: without $base, with $with, extra $((with - base)) ($(echo "scale=4; $with / $base" | bc)x)"
