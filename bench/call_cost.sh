#!/usr/bin/env bash
# Cost per instrumented call: PDOStatement::fetch() in a loop, with and
# without the extension (tracing the CLI script as a transaction), best of
# 5 rounds each, alternated 5 times. Prints ns/call and the difference.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
N=${1:-200000}
for _ in 1 2 3 4 5; do
  base=$(php bench/call_cost.php "$N")
  with=$(php -d extension="$SO" -d sonde.trace_cli=1 -d sonde.agent_socket=/nonexistent bench/call_cost.php "$N")
  echo "without $base ns/call   with $with ns/call   extra $(echo "$with - $base" | bc) ns"
done
