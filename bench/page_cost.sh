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
# The extension and its settings come from an ini file in an extra scan
# directory (as in production), not from `-d` arguments: php-cgi -T parses
# its command line again for every request, ≈ 170 instructions per `-d`.
# Both runs get the same PHP_INI_SCAN_DIR (the default directory, then
# ours: empty without the extension). OPcache is on in both (php-cgi's
# default; said explicitly so the figures do not depend on php.ini).
INI=$(mktemp -d)
trap 'rm -rf "$INI"' EXIT
mkdir "$INI/without" "$INI/with"
printf 'extension=%s\nsonde.agent_socket=%s\n' "$SO" "${SONDE_SOCKET:-/nonexistent/agent.sock}" >"$INI/with/zz-sonde.ini"
count() { # args: ini dir, T
  PHP_INI_SCAN_DIR=":$INI/$1" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$CGI" -q -d opcache.enable=1 -T "$2" tests/php/bench_page.php 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_request() {
  local one many
  one=$(count "$1" 1); many=$(count "$1" 41)
  echo $(( (many - one) / 40 ))
}
base=$(per_request without)
with=$(per_request with)
echo "instructions per request: without $base, with $with, extra $((with - base)) ($(echo "scale=4; $with / $base" | bc)x)"
