#!/bin/sh
# Builds sonde-agent_<version>_<arch>.deb with dpkg-deb (no debhelper, no
# cargo-deb): the agent, its systemd unit, /etc/sonde/agent.toml (conffile),
# the PHP extension for one PHP version and its mods-available ini
# (conffile), and maintainer scripts that enable both.
#
#   packaging/build-deb.sh [--bin-dir DIR] [--out DIR]
#
#   --bin-dir  where sonde-agent and libsonde_php.so are (default:
#              target/release; build them first with `cargo build --release`)
#   --out      where the .deb is written (default: target/debian)
#
# The PHP version and its extension API come from php-config when it is
# installed (the extension is built against it), else from PHP_VERSION and
# PHP_API in the environment (default 8.2 / 20220829, Debian 12's PHP).
# Prints the path of the .deb on its last line.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin_dir="$root/target/release"
out_dir="$root/target/debian"

while [ $# -gt 0 ]; do
	case "$1" in
	--bin-dir) bin_dir=$2; shift 2 ;;
	--out) out_dir=$2; shift 2 ;;
	-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-deb.sh: unknown argument $1" >&2; exit 64 ;;
	esac
done

die() { echo "build-deb.sh: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (apt-get install dpkg)"

agent="$bin_dir/sonde-agent"
ext="$bin_dir/libsonde_php.so"
[ -x "$agent" ] || die "$agent not found: run cargo build --release (or pass --bin-dir)"
[ -f "$ext" ] || die "$ext not found: run cargo build --release (or pass --bin-dir)"

# [workspace.package] version in the root Cargo.toml.
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n1)
[ -n "$version" ] || die "no [workspace.package] version in $root/Cargo.toml"
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)

if [ -z "${PHP_VERSION:-}" ] && command -v php-config >/dev/null 2>&1; then
	PHP_VERSION=$(php-config --version | cut -d. -f1,2)
	PHP_API=$(basename "$(php-config --extension-dir)")
fi
PHP_VERSION=${PHP_VERSION:-8.2}
PHP_API=${PHP_API:-20220829}
case "$PHP_API" in *[!0-9]*|'') die "PHP_API must be the numeric extension API (e.g. 20220829), not $PHP_API" ;; esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
pkg="$stage/sonde-agent"

install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
	"$pkg/etc/sonde" "$pkg/usr/lib/php/$PHP_API" "$pkg/etc/php/$PHP_VERSION/mods-available" \
	"$pkg/usr/share/doc/sonde-agent" "$pkg/usr/share/doc/sonde"
install -m 0755 "$agent" "$pkg/usr/bin/sonde-agent"
install -m 0644 "$ext" "$pkg/usr/lib/php/$PHP_API/sonde.so"
if command -v strip >/dev/null 2>&1; then
	strip --strip-unneeded "$pkg/usr/bin/sonde-agent" "$pkg/usr/lib/php/$PHP_API/sonde.so"
fi
install -m 0644 "$root/systemd/sonde-agent.service" "$pkg/lib/systemd/system/sonde-agent.service"
# The token lives here: root only (postinst repeats it for upgrades).
install -m 0640 "$here/agent.toml" "$pkg/etc/sonde/agent.toml"
sed "s|/etc/php/8.2/|/etc/php/$PHP_VERSION/|" "$here/sonde.ini" \
	>"$pkg/etc/php/$PHP_VERSION/mods-available/sonde.ini"
chmod 0644 "$pkg/etc/php/$PHP_VERSION/mods-available/sonde.ini"
# Where the unit's Documentation= points.
for doc in agent.md fleet.md; do
	if [ -f "$root/docs/$doc" ]; then
		install -m 0644 "$root/docs/$doc" "$pkg/usr/share/doc/sonde/$doc"
	fi
done
cat >"$pkg/usr/share/doc/sonde-agent/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sonde
Files: *
License: see the LICENSE of the Sonde source
COPYRIGHT

for script in postinst prerm postrm; do
	sed "s|@PHP_VERSION@|$PHP_VERSION|g" "$here/debian/$script" >"$pkg/DEBIAN/$script"
	chmod 0755 "$pkg/DEBIAN/$script"
done
cat >"$pkg/DEBIAN/conffiles" <<CONFFILES
/etc/sonde/agent.toml
/etc/php/$PHP_VERSION/mods-available/sonde.ini
CONFFILES

size_kb=$(du -sk "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: sonde-agent
Version: $version
Architecture: $arch
Maintainer: Sonde <sonde@localhost>
Section: net
Priority: optional
Installed-Size: $size_kb
Depends: libc6, phpapi-$PHP_API
Recommends: php$PHP_VERSION-fpm
Description: Sonde APM host agent and PHP $PHP_VERSION extension
 The PHP extension records every request (SQL, external calls, errors)
 and sends it to the local agent over a Unix socket; the agent spools and
 streams it to the Sonde collector. On AWS the agent reports its instance
 identity and Auto Scaling group, and deregisters as terminated on scale-in.
CONTROL

mkdir -p "$out_dir"
deb="$out_dir/sonde-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
