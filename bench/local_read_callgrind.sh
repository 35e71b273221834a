#!/usr/bin/env bash
# Instructions per local file read (callgrind: stable on a noisy machine):
# bench/local_read.php at N and 2N rounds (each round one file_get_contents()
# and one fopen()+fread()+fclose() of a local file), with and without the
# extension (tracing the CLI script); per read = difference / (2 N).
set -euo pipefail
cd "$(dirname "$0")/.."
SO=${SONDE_SO:-$PWD/target/release/libsonde_php.so}
N=${1:-2000}
count() { # args: rounds, extra php args...
  local n=$1; shift
  valgrind --tool=callgrind --callgrind-out-file=/dev/null php "$@" bench/local_read.php "$n" 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
EXT=(-d extension="$SO" -d sonde.trace_cli=1 -d sonde.agent_socket=/nonexistent/agent.sock)
base=$(( $(count $((2 * N))) - $(count "$N") ))
with=$(( $(count $((2 * N)) "${EXT[@]}") - $(count "$N" "${EXT[@]}") ))
reads=$((2 * N))
echo "instructions per local read: without $((base / reads)), with $((with / reads)), extra $(( (with - base) / reads ))"
