#!/usr/bin/env bash
# Fixed cost per request of an empty page, counted in instructions by
# callgrind (stable on a noisy machine): php-cgi runs the page T times in one
# process; per request = (I(T=201) - I(T=1)) / 200. With and without the
# extension (agent absent: the record is built and its send dropped).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
CGI=$(find_cgi)
make_ini_dirs
count() { # args: ini dir, T
  cgi_count "$1" "$2" bench/empty.php
}
base=$(per_request count without 200)
with=$(per_request count with 200)
report_per_request "$base" "$with"
