#!/usr/bin/env bash
# Installs the Debian packages Sonde builds and tests with, when missing.
# Idempotent; needs root (or sudo) the first time only.
set -euo pipefail

PKGS=(
  php8.2-dev php8.2-cli php8.2-fpm php8.2-sqlite3  # extension headers, php-fpm, demo app DB
  php8.2-mysql php8.2-pgsql php8.2-curl php8.2-redis  # the libraries the extension instruments
  php8.2-memcached php8.2-soap memcached          # ... Memcached and SoapClient; the tests start their own memcached
  php8.2-cgi valgrind bc                          # the fast-sender test and the benchmark scripts
  nginx                                           # the web server in front of php-fpm
  libclang-dev                                    # bindgen
  protobuf-compiler                               # protoc for sonde-proto
  curl ca-certificates
  wrk                                             # load for the JIT test and the benchmarks
  chromium                                        # the console's headless-browser tests (tests/console)
  dpkg-dev file lintian adduser systemd           # packaging/build-deb.sh and its tests (shlibdeps, lintian,
                                                  # systemd-analyze verify; the install test runs dpkg -i here)
  cloud-init                                      # `cloud-init schema` of packaging/cloud-init.yaml
  iproute2 openssl                                # the fleet test's network namespaces; test certificates (TLS,
                                                  # signed instance identities)
)
# `packer validate` of packaging/ami/sonde-agent.json. Debian 12 has packer
# 1.6.6; later Debian releases dropped it (the test then says it skipped).
# A fresh machine has no package lists yet to tell.
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
if ! command -v packer >/dev/null; then
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || $SUDO apt-get update -qq
  if apt-cache show packer >/dev/null 2>&1; then PKGS+=(packer); fi
fi
# node and npm drive that browser; a machine may already have them from
# elsewhere (e.g. a nodejs package that bundles npm), so only when missing.
command -v node >/dev/null || PKGS+=(nodejs)
command -v npm >/dev/null || PKGS+=(npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Debian's nginx package tries to start the service; keep it from taking port 80.
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
