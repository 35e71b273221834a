#!/usr/bin/env bash
# Fixed cost per request of an empty page, counted in instructions by
# callgrind (stable on a noisy machine): php-cgi runs the page T times in one
# process; per request = (I(T=201) - I(T=1)) / 200. With and without the
# extension (agent absent: the record is built and its send dropped).
set -euo pipefail
cd "$(dirname "$0")/.."
SO=${SONDE_SO:-$PWD/target/release/libsonde_php.so}
CGI=$(command -v php-cgi8.2 || command -v php-cgi)
# The extension and its settings come from an ini file in an extra scan
# directory (as in production), not from `-d` arguments: php-cgi -T parses
# its command line again for every request, ≈ 170 instructions per `-d`.
# Both runs get the same PHP_INI_SCAN_DIR (the default directory, then
# ours: empty without the extension). OPcache is on in both.
INI=$(mktemp -d)
trap 'rm -rf "$INI"' EXIT
mkdir "$INI/without" "$INI/with"
printf 'extension=%s\nsonde.agent_socket=%s\n' "$SO" "${SONDE_SOCKET:-/nonexistent/agent.sock}" >"$INI/with/zz-sonde.ini"
count() { # args: ini dir, T
  PHP_INI_SCAN_DIR=":$INI/$1" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$CGI" -q -d opcache.enable=1 -T "$2" bench/empty.php 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_request() {
  local one many
  one=$(count "$1" 1); many=$(count "$1" 201)
  echo $(( (many - one) / 200 ))
}
base=$(per_request without)
with=$(per_request with)
echo "instructions per request: without $base, with $with, extra $((with - base)) ($(echo "scale=4; $with / $base" | bc)x)"
