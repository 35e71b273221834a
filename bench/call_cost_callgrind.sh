#!/usr/bin/env bash
# Instructions per instrumented call (callgrind: stable on a noisy machine):
# the fetch loop of bench/call_cost.php at N and 2N rows (5 rounds each), with
# and without the extension; per call = extra instructions / (5 N).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
N=${1:-20000}
base=$(cli_growth bench/call_cost.php "$N")
with=$(cli_growth bench/call_cost.php "$N" "${CLI_EXT[@]}")
report_per_unit "fetch() call" "$base" "$with" $((5 * N))
