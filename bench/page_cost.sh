#!/usr/bin/env bash
# Extension cost on a realistic page, counted in instructions (callgrind,
# stable on a noisy machine): tests/php/bench_page.php (10 PDO-MySQL
# statements, a fetch of 100 rows, one curl call) run T times by php-cgi,
# per request = (I(T=41) - I(T=1)) / 40, with and without the extension.
# Needs the local MariaDB. Counts user-space instructions of PHP only: the
# database's and the kernel's work are outside, as they are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
CGI=$(find_cgi)
export SERVER_PORT=1   # the page's curl call goes to a closed port
make_ini_dirs
count() { # args: ini dir, T
  cgi_count "$1" "$2" tests/php/bench_page.php
}
base=$(per_request count without 40)
with=$(per_request count with 40)
report_per_request "$base" "$with"
