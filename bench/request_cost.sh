#!/usr/bin/env bash
# Fixed cost per request of an empty page, counted in instructions by
# callgrind (stable on a noisy machine): php-cgi runs the page T times in one
# process; per request = (I(T=201) - I(T=1)) / 200. With and without the
# extension (agent absent: the record is built and its send dropped).
set -euo pipefail
cd "$(dirname "$0")/.."
SO=${SONDE_SO:-$PWD/target/release/libsonde_php.so}
CGI=$(command -v php-cgi8.2 || command -v php-cgi)
count() { # args: T, extra php args...
  local t=$1; shift
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$CGI" -q "$@" -T "$t" bench/empty.php 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_request() {
  local one many
  one=$(count 1 "$@"); many=$(count 201 "$@")
  echo $(( (many - one) / 200 ))
}
base=$(per_request)
with=$(per_request -d extension="$SO" -d sonde.agent_socket="${SONDE_SOCKET:-/nonexistent/agent.sock}")
echo "instructions per request: without $base, with $with, extra $((with - base)) ($(echo "scale=4; $with / $base" | bc)x)"
