#!/usr/bin/env bash
# Instructions per instrumented call (callgrind: stable on a noisy machine):
# the fetch loop of bench/call_cost.php at N and 2N rows (5 rounds each), with
# and without the extension; per call = extra instructions / (5 N).
set -euo pipefail
cd "$(dirname "$0")/.."
SO=${SONDE_SO:-$PWD/target/release/libsonde_php.so}
N=${1:-20000}
count() { # args: rows, extra php args...
  local n=$1; shift
  valgrind --tool=callgrind --callgrind-out-file=/dev/null php "$@" bench/call_cost.php "$n" 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
EXT=(-d extension="$SO" -d sonde.trace_cli=1 -d sonde.agent_socket=/nonexistent/agent.sock)
base=$(( $(count $((2 * N))) - $(count "$N") ))
with=$(( $(count $((2 * N)) "${EXT[@]}") - $(count "$N" "${EXT[@]}") ))
calls=$((5 * N))
echo "instructions per fetch() call: without $((base / calls)), with $((with / calls)), extra $(( (with - base) / calls ))"
