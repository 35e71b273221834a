#!/usr/bin/env bash
# The issue's wall-clock benchmark with the baseline running at the same
# time: two php-fpm masters serve tests/php/bench_page.php (10 PDO-MySQL
# statements, a fetch of 100 rows, one curl call) behind one nginx, one
# without the extension and one with it, and two wrk clients load both at
# once (closed loop, the same connections each). Both sides see the same
# machine at the same moments, so the drift of a shared 2-core VM between
# runs (which made sequential A/B runs here differ by 15 % or more) falls
# on both alike. Per round: each side's req/s and php-fpm CPU per request
# (utime+stime of its master and workers from /proc); the ratios
# with/without; then their median and range over the rounds.
#
# Usage: bench/fpm_ab.sh [rounds=10] [secs=10] [workers=2] [connections=2]
# SONDE_SO: the extension (default: the release build). SONDE_INI: extra
# settings for the side with it ("sonde.propagate=0", space-separated).
# SONDE_SOCKET: a live agent's socket for the side with it (default: none,
# records are built and their send dropped). Needs nginx, php8.2-fpm, wrk
# and the local MariaDB. SONDE_AB_SAME=1: the "with" side runs without the
# extension too (an A/A run: how far apart two identical sides measure).
# SONDE_BASE_SO: the "without" side loads this build of the extension
# instead (to compare two builds; SONDE_INI applies to the other side only).
# SONDE_AB_AGENT=1: a real collector and agent (target/release) run for
# the whole benchmark and the extension's side hands its records to them
# (the production setup; both take CPU from the same two cores, equally for
# both sides).
# SONDE_AB_PAGE: another page to load (a path from the repository root,
# e.g. bench/empty.php for the fixed cost per request).
# SONDE_AB_PERF=1: also sample both sides' workers with `perf record -e
# cpu-clock` (2 kHz) during each round and print, at the end, each shared
# object's CPU per request on both sides (µs) — where the difference goes,
# measured under the same conditions (e.g. the extension's own code against
# the rest; with SONDE_BASE_SO, one build's own code against the other's).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=lib.sh
. bench/lib.sh
ROUNDS=${1:-10}
SECS=${2:-10}
WORKERS=${3:-2}
CONNS=${4:-2}
FPM=$(command -v php-fpm8.2 || echo /usr/sbin/php-fpm8.2)
WEB_A=${WEB_PORT:-18393}
WEB_B=$((WEB_A + 1))
FPM_A=$((WEB_A + 2))
FPM_B=$((WEB_A + 3))
D=$(mktemp -d)
MASTERS=()
DAEMONS=()
PERFS=()
cleanup() {
  for m in "${MASTERS[@]}" "${DAEMONS[@]}"; do kill "$m" 2>/dev/null || true; done
  if [ -f "$D/nginx.pid" ]; then kill "$(cat "$D/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$D" "${RUN:-}"
}
trap cleanup EXIT
mkdir -p "$D/tmp"
if [ -n "${SONDE_AB_AGENT:-}" ]; then
  BIN=${SONDE_BIN_DIR:-$PWD/target/release}
  printf '[grpc]\nlisten = "127.0.0.1:%s"\n[http]\nlisten = "127.0.0.1:%s"\n[storage]\npath = "%s"\n[auth]\nagent_tokens = ["bench-token"]\n' \
    $((WEB_A + 4)) $((WEB_A + 5)) "$D/collector-data" >"$D/collector.toml"
  # The socket, and the ring and scoreboard beside it, in memory as in
  # production (/run is tmpfs there; on this machine it is the root disk,
  # where the kernel's writeback of the ring's dirty pages makes the
  # workers fault them back in).
  RUN=$(mktemp -d -p /dev/shm)
  AGENT_SOCKET=$RUN/agent.sock
  printf 'collector = "http://127.0.0.1:%s"\ntoken = "bench-token"\nsocket = "%s"\nsocket_group = "root"\nspool_dir = "%s"\n' \
    $((WEB_A + 4)) "$AGENT_SOCKET" "$D/agent-spool" >"$D/agent.toml"
  "$BIN/sonde-collector" --config "$D/collector.toml" >"$D/collector.log" 2>&1 &
  DAEMONS+=($!)
  "$BIN/sonde-agent" --config "$D/agent.toml" >"$D/agent.log" 2>&1 &
  DAEMONS+=($!)
  for _ in $(seq 1 100); do [ -S "$AGENT_SOCKET" ] && break; sleep 0.1; done
  if [ ! -S "$AGENT_SOCKET" ]; then
    echo "the agent did not start: $(cat "$D/agent.log")" >&2
    exit 1
  fi
fi
PAGE=${SONDE_AB_PAGE:-tests/php/bench_page.php}
start_nginx "$(bench_server "$WEB_A" "$FPM_A" "$PAGE")
$(bench_server "$WEB_B" "$FPM_B" "$PAGE")"

start_fpm() { # args: name, fpm port, php -d arguments...
  local name=$1 port=$2
  shift 2
  fpm_conf "$name" "$port" "$WORKERS"
  "$FPM" --nodaemonize --fpm-config "$D/$name.conf" --allow-to-run-as-root \
    -d opcache.enable=1 "$@" >"$D/$name.log" 2>&1 &
  MASTERS+=($!)
}
ext=(-d "extension=$SO")
if [ -n "${SONDE_AB_SAME:-}" ]; then ext=(-d opcache.enable=1); fi
for setting in ${SONDE_INI:-}; do ext+=(-d "$setting"); done

# Starts both masters; the extension's side alternates between rounds
# (nginx's two servers and the two wrk clients are not quite alike: an A/A
# run here measured one side ≈ 3 % faster than the other).
start_sides() { # args: round
  local with_port=$FPM_B without_port=$FPM_A
  if [ $(($1 % 2)) -eq 0 ]; then with_port=$FPM_A without_port=$FPM_B; fi
  MASTERS=()
  if [ -n "${SONDE_BASE_SO:-}" ]; then
    start_fpm without "$without_port" -d "extension=$SONDE_BASE_SO"
  else
    start_fpm without "$without_port"
  fi
  start_fpm with "$with_port" "${ext[@]}"
  wait_port "$FPM_A"
  wait_port "$FPM_B"
  WEB_WITHOUT=$WEB_A WEB_WITH=$WEB_B
  if [ "$with_port" = "$FPM_A" ]; then WEB_WITHOUT=$WEB_B WEB_WITH=$WEB_A; fi
}
stop_sides() {
  for m in "${MASTERS[@]}"; do kill -QUIT "$m" 2>/dev/null || true; done
  for m in "${MASTERS[@]}"; do wait "$m" 2>/dev/null || true; done
  MASTERS=()
}

# CPU clock ticks (utime + stime) of a master and its workers.
ticks() { # args: master pid
  local pids total=0 p
  pids="$1 $(cat "/proc/$1/task/$1/children")"
  for p in $pids; do
    total=$((total + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")))
  done
  echo "$total"
}
# Requests wrk made (fails the run on any non-2xx answer).
requests() { # args: wrk output file
  if grep -q "Non-2xx" "$1"; then
    echo "non-2xx answers: $(cat "$1")" >&2
    return 1
  fi
  awk '/requests in/ { print $1 }' "$1"
}

load() { # args: seconds; loads both sides at once
  wrk -t1 -c"$CONNS" -d"$1s" "http://127.0.0.1:$WEB_WITHOUT/bench_page.php" >"$D/wrk.a" &
  local a=$!
  wrk -t1 -c"$CONNS" -d"$1s" "http://127.0.0.1:$WEB_WITH/bench_page.php" >"$D/wrk.b"
  wait "$a"
}

echo "round | without req/s | with req/s | req/s ratio | without CPU µs/req | with CPU µs/req | CPU ratio"
RATIOS_RPS=()
RATIOS_CPU=()
for round in $(seq 1 "$ROUNDS"); do
  start_sides "$round"
  load 2 # warm up: opcache, persistent connections, the table
  if [ -n "${SONDE_AB_PERF:-}" ]; then
    for side in 0 1; do
      perf record -q -e cpu-clock -F 2000 -o "$D/perf.$side.$round" \
        -p "$(tr -s ' ' ',' <"/proc/${MASTERS[$side]}/task/${MASTERS[$side]}/children" | sed 's/,$//')" \
        -- sleep "$SECS" >/dev/null 2>&1 &
      PERFS[side]=$!
    done
  fi
  a0=$(ticks "${MASTERS[0]}")
  b0=$(ticks "${MASTERS[1]}")
  load "$SECS"
  a1=$(ticks "${MASTERS[0]}")
  b1=$(ticks "${MASTERS[1]}")
  if [ -n "${SONDE_AB_PERF:-}" ]; then wait "${PERFS[@]}" || true; fi
  ra=$(requests "$D/wrk.a")
  rb=$(requests "$D/wrk.b")
  echo "$ra" >"$D/requests.0.$round"
  echo "$rb" >"$D/requests.1.$round"
  stop_sides
  # /proc counts USER_HZ (100) ticks per second.
  line=$(awk -v ra="$ra" -v rb="$rb" -v ta=$((a1 - a0)) -v tb=$((b1 - b0)) -v s="$SECS" -v r="$round" 'BEGIN {
    ca = ta * 1e4 / ra; cb = tb * 1e4 / rb
    printf "%d | %.0f | %.0f | %.3f | %.1f | %.1f | %.3f", r, ra / s, rb / s, rb / ra, ca, cb, cb / ca }')
  echo "$line"
  RATIOS_RPS+=("$(echo "$line" | awk -F' [|] ' '{ print $4 }')")
  RATIOS_CPU+=("$(echo "$line" | awk -F' [|] ' '{ print $7 }')")
done
summary() { # args: label, values...
  local label=$1
  shift
  printf '%s\n' "$@" | sort -g | awk -v l="$label" '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%s: median ×%.3f (min ×%.3f, max ×%.3f, %d rounds)\n", l, m, v[1], v[NR], NR }'
}
summary "throughput with/without" "${RATIOS_RPS[@]}"
summary "php-fpm CPU per request with/without" "${RATIOS_CPU[@]}"
if [ -n "${SONDE_AB_PERF:-}" ]; then
  # Samples (500 µs each at 2 kHz) per shared object over all rounds,
  # divided by the side's requests.
  echo "CPU per request by shared object (perf samples), µs: without | with | difference"
  for side in 0 1; do
    reqs=$(cat "$D"/requests.$side.* | awk '{ s += $1 } END { print s }')
    for f in "$D"/perf.$side.*; do
      perf report -i "$f" --stdio --sort dso -F sample,dso 2>/dev/null | grep -v '^#' | grep .
    done | awk -v r="$reqs" -v side=$side '{ n[$2] += $1 } END { for (k in n) printf "%s %s %.2f\n", side, k, n[k] * 500 / r }'
  done | awk '{ v[$2, $1] = $3; t[$1] += $3; seen[$2] = 1 } END {
    printf "%9.1f %-28s %8.1f %8.1f %+8.1f\n", 999999, "(all)", t[0], t[1], t[1] - t[0]
    for (k in seen) {
      big = v[k, 0] > v[k, 1] ? v[k, 0] : v[k, 1]
      printf "%9.1f %-28s %8.1f %8.1f %+8.1f\n", big, k, v[k, 0], v[k, 1], v[k, 1] - v[k, 0]
    } }' | sort -rn | head -16 | cut -c11-
fi
