#!/usr/bin/env bash
# The main job on one machine: builds Sonde, starts the collector (embedded
# storage), the agent, php-fpm with the extension and nginx serving the demo
# fan-community API, drives steady traffic, and prints where to look.
# Ctrl-C stops everything it started.
#
# Ports (override with env): SONDE_WEB_PORT (nginx, 8080),
# SONDE_HTTP_PORT (collector API/console, 7718), SONDE_GRPC_PORT (7717).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
./scripts/install-deps.sh

WEB_PORT=${SONDE_WEB_PORT:-8080}
HTTP_PORT=${SONDE_HTTP_PORT:-7718}
GRPC_PORT=${SONDE_GRPC_PORT:-7717}
RPS=${SONDE_DEMO_RPS:-20}
RUN=${SONDE_RUN_DIR:-/tmp/sonde-demo}
FPM_USER=www-data

echo "==> cargo build --release"
cargo build --release
BIN=$ROOT/target/release

rm -rf "$RUN"
mkdir -p "$RUN"/{app,data,spool,collector,nginx}
chmod 755 "$RUN"
cp demo/app/index.php "$RUN/app/"
chown -R "$FPM_USER:$FPM_USER" "$RUN/data"
TOKEN=demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
CONSOLE_PASSWORD=${SONDE_ADMIN_PASSWORD:-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')}

cat >"$RUN/collector.toml" <<TOML
[grpc]
listen = "127.0.0.1:$GRPC_PORT"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[storage]
path = "$RUN/collector"
[auth]
agent_tokens = ["$TOKEN"]
[console]
admin_user = "admin"
admin_password = "$CONSOLE_PASSWORD"
TOML

cat >"$RUN/agent.toml" <<TOML
collector = "http://127.0.0.1:$GRPC_PORT"
token = "$TOKEN"
socket = "$RUN/agent.sock"
socket_group = "$FPM_USER"
spool_dir = "$RUN/spool"
TOML

cat >"$RUN/php-fpm.conf" <<CONF
[global]
pid = $RUN/php-fpm.pid
error_log = $RUN/php-fpm.log
daemonize = no
[fanapp]
user = $FPM_USER
group = $FPM_USER
listen = $RUN/php-fpm.sock
listen.owner = $FPM_USER
listen.group = $FPM_USER
listen.mode = 0660
pm = static
pm.max_children = 8
catch_workers_output = yes
clear_env = no
php_admin_value[sonde.app_name] = fanapp
php_admin_value[sonde.agent_socket] = $RUN/agent.sock
env[SONDE_DEMO_DB] = $RUN/data/demo.sqlite
CONF

cat >"$RUN/nginx.conf" <<CONF
worker_processes 2;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
daemon off;
user $FPM_USER;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $RUN/nginx/body;
  proxy_temp_path $RUN/nginx/proxy;
  fastcgi_temp_path $RUN/nginx/fastcgi;
  uwsgi_temp_path $RUN/nginx/uwsgi;
  scgi_temp_path $RUN/nginx/scgi;
  server {
    listen 127.0.0.1:$WEB_PORT;
    root $RUN/app;
    location / {
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $RUN/app/index.php;
      fastcgi_param SCRIPT_NAME /index.php;
      fastcgi_pass unix:$RUN/php-fpm.sock;
    }
  }
}
CONF

PIDS=()
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  trap '' INT TERM
  echo; echo "==> stopping"
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit "$rc"
}
trap cleanup INT TERM EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open; see $RUN/*.log" >&2; exit 1; }
wait_file() { for _ in $(seq 1 100); do [[ -e $1 ]] && return 0; sleep 0.1; done; echo "$1 did not appear; see $RUN/*.log" >&2; exit 1; }

"$BIN/sonde-collector" --config "$RUN/collector.toml" >"$RUN/collector.log" 2>&1 & PIDS+=($!)
wait_port "$HTTP_PORT"; wait_port "$GRPC_PORT"
"$BIN/sonde-agent" --config "$RUN/agent.toml" >"$RUN/agent.log" 2>&1 & PIDS+=($!)
wait_file "$RUN/agent.sock"
/usr/sbin/php-fpm8.2 --nodaemonize --fpm-config "$RUN/php-fpm.conf" -d "extension=$BIN/libsonde_php.so" >"$RUN/php-fpm.out" 2>&1 & PIDS+=($!)
wait_file "$RUN/php-fpm.sock"
nginx -c "$RUN/nginx.conf" -p "$RUN" >"$RUN/nginx.log" 2>&1 & PIDS+=($!)
wait_port "$WEB_PORT"
php demo/traffic.php "http://127.0.0.1:$WEB_PORT" "$RPS" >/dev/null 2>&1 & PIDS+=($!)

cat <<MSG

Sonde is running (logs and configs in $RUN):
  console      http://127.0.0.1:$HTTP_PORT/   log in as admin / $CONSOLE_PASSWORD
  demo app     http://127.0.0.1:$WEB_PORT/api/v6/photos?lang=ko   ($RPS requests/s of traffic)
  transactions http://127.0.0.1:$HTTP_PORT/api/v1/transactions
  agents       http://127.0.0.1:$HTTP_PORT/api/v1/agents
Press Ctrl-C to stop.
MSG
wait -n "${PIDS[@]}" || true
echo "a process exited on its own; see $RUN/*.log" >&2
exit 1
