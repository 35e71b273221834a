# shellcheck shell=bash
# Shared by the bench/ scripts; sourced (not run) from the repository root,
# where each script has already cd'ed, after its own `set -euo pipefail`.
# Sets SO and AGENT_SOCKET; the rest are functions.

# The extension under test (default: the release build).
SO=${SONDE_SO:-$PWD/target/release/libsonde_php.so}
# The agent socket of runs with the extension. By default no agent listens
# there: records are built and their send dropped. SONDE_SOCKET names a live
# agent's socket, to count the live path (ring and scoreboard).
AGENT_SOCKET=${SONDE_SOCKET:-/nonexistent/agent.sock}
# php -d arguments that load the extension and trace the CLI script as a
# transaction, with no agent (the CLI scripts do not read SONDE_SOCKET).
# shellcheck disable=SC2034  # used by the scripts that source this file
CLI_EXT=(-d extension="$SO" -d sonde.trace_cli=1 -d sonde.agent_socket=/nonexistent/agent.sock)

# Prints the path of php-cgi (8.2 preferred).
find_cgi() {
  command -v php-cgi8.2 || command -v php-cgi
}

# Makes the ini scan directories $INI/without (empty) and $INI/with (the
# extension and its agent socket), removed on exit.
# The extension and its settings come from an ini file in an extra scan
# directory (as in production), not from `-d` arguments: php-cgi -T parses
# its command line again for every request, ≈ 170 instructions per `-d`.
# Both runs get the same PHP_INI_SCAN_DIR (the default directory, then
# ours: empty without the extension).
make_ini_dirs() {
  INI=$(mktemp -d)
  trap 'rm -rf "$INI"' EXIT
  mkdir "$INI/without" "$INI/with"
  printf 'extension=%s\nsonde.agent_socket=%s\n' "$SO" "$AGENT_SOCKET" >"$INI/with/zz-sonde.ini"
}

# Prints the instructions callgrind counts for one command (its output is
# discarded). User-space instructions only: stable on a noisy machine, where
# wall-clock time is not.
callgrind_total() { # args: command...
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

# Instructions of php-cgi running a script T times in one process, with the
# ini scan directory $INI/<without|with> (see make_ini_dirs). OPcache is on
# in both (php-cgi's default; said explicitly so the figures do not depend
# on php.ini).
cgi_count() { # args: without|with, T, script
  PHP_INI_SCAN_DIR=":$INI/$1" callgrind_total "$CGI" -q -d opcache.enable=1 -T "$2" "$3"
}

# Instructions per request: (I(1 + n) - I(1)) / n, where I(k) is what
# `count_fn arg k` prints, so the start-up and shutdown cost cancels out.
per_request() { # args: count_fn, arg, n
  local one many
  one=$("$1" "$2" 1)
  many=$("$1" "$2" $((1 + $3)))
  echo $(((many - one) / $3))
}

# Prints "<prefix>instructions per request: without …, with …, extra … (…x)".
report_per_request() { # args: base, with, [prefix]
  echo "${3:-}instructions per request: without $1, with $2, extra $(($2 - $1)) ($(echo "scale=4; $2 / $1" | bc)x)"
}

# Instructions that php CLI spends going from N to 2N units of the script's
# loop: I(2N) - I(N), so the start-up and shutdown cost cancels out.
cli_growth() { # args: script, N, extra php args...
  local script=$1 n=$2; shift 2
  echo $(( $(callgrind_total php "$@" "$script" $((2 * n))) - $(callgrind_total php "$@" "$script" "$n") ))
}

# Prints "instructions per <unit>: without …, with …, extra …", each growth
# divided by the number of units it covers.
report_per_unit() { # args: unit, base growth, with growth, units
  echo "instructions per $1: without $(($2 / $4)), with $(($3 / $4)), extra $((($3 - $2) / $4))"
}

# An nginx server block for the php-fpm scripts: /ping answers 204 (the
# page's curl call), /bench_page.php runs the page (default
# tests/php/bench_page.php) on php-fpm at the given port.
bench_server() { # args: web port, fpm port, [page]
  cat <<EOF
  server {
    listen 127.0.0.1:$1;
    location = /ping { return 204; }
    location = /bench_page.php {
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $PWD/${3:-tests/php/bench_page.php};
      fastcgi_pass 127.0.0.1:$2;
    }
  }
EOF
}

# Starts nginx (one worker; pid, logs and temp files in $D) serving the
# server blocks given.
start_nginx() { # args: server blocks
  cat >"$D/nginx.conf" <<EOF
worker_processes 1;
pid $D/nginx.pid;
error_log $D/nginx-error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $D/tmp; proxy_temp_path $D/tmp; fastcgi_temp_path $D/tmp;
  uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
$1
}
EOF
  nginx -c "$D/nginx.conf"
}

# Waits until something listens on a local TCP port (20 s at most).
wait_port() { # args: port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2
  return 1
}

# Writes $D/<name>.conf: a php-fpm pool of static workers on a local port,
# in the foreground, with the extension's agent socket set per pool.
fpm_conf() { # args: name, fpm port, workers
  cat >"$D/$1.conf" <<EOF
[global]
pid = $D/$1.pid
error_log = $D/$1-error.log
daemonize = no
[www]
listen = 127.0.0.1:$2
pm = static
pm.max_children = $3
clear_env = no
php_admin_value[sonde.agent_socket] = $AGENT_SOCKET
EOF
}
