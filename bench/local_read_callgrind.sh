#!/usr/bin/env bash
# Instructions per local file read (callgrind: stable on a noisy machine):
# bench/local_read.php at N and 2N rounds (each round one file_get_contents()
# and one fopen()+fread()+fclose() of a local file), with and without the
# extension (tracing the CLI script); per read = difference / (2 N).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
N=${1:-2000}
base=$(cli_growth bench/local_read.php "$N")
with=$(cli_growth bench/local_read.php "$N" "${CLI_EXT[@]}")
report_per_unit "local read" "$base" "$with" $((2 * N))
