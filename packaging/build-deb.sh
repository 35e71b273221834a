#!/bin/sh
# Builds the two Debian packages with dpkg-deb (no debhelper, no cargo-deb):
#   sonde-agent_<version>_<arch>.deb      the agent, its unit, agent.toml
#       (conffile), the PHP extension for one PHP version and its
#       mods-available ini (conffile); postinst creates the group `sonde`
#       (php-fpm's www-data joins it) and enables the module and the unit
#   sonde-collector_<version>_<arch>.deb  the collector, its unit,
#       collector.toml (conffile); postinst creates the system user
#       `sonde-collector` and its data directory and enables the unit
#
#   packaging/build-deb.sh [--bin-dir DIR] [--out DIR] [--package NAME]...
#
#   --bin-dir  where sonde-agent, libsonde_php.so and sonde-collector are
#              (default: target/release; `cargo build --release` first)
#   --out      where the .deb files are written (default: target/debian)
#   --package  agent or collector: build only that one (repeatable;
#              default: both)
#
# The PHP version and its extension API come from php-config when it is
# installed (the extension is built against it), else from PHP_VERSION and
# PHP_API in the environment (default 8.2 / 20220829, Debian 12's PHP).
# Prints the path of each .deb, one per line, agent first, as its last lines.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin_dir="$root/target/release"
out_dir="$root/target/debian"
packages=""

while [ $# -gt 0 ]; do
	case "$1" in
	--bin-dir) bin_dir=$2; shift 2 ;;
	--out) out_dir=$2; shift 2 ;;
	--package)
		case "$2" in
		agent|collector) packages="$packages $2" ;;
		*) echo "build-deb.sh: --package is agent or collector, not $2" >&2; exit 64 ;;
		esac
		shift 2 ;;
	-h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-deb.sh: unknown argument $1" >&2; exit 64 ;;
	esac
done
packages=${packages:-agent collector}
want() { case " $packages " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

die() { echo "build-deb.sh: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (apt-get install dpkg)"

agent="$bin_dir/sonde-agent"
ext="$bin_dir/libsonde_php.so"
collector="$bin_dir/sonde-collector"
if want agent; then
	[ -x "$agent" ] || die "$agent not found: run cargo build --release (or pass --bin-dir)"
	[ -f "$ext" ] || die "$ext not found: run cargo build --release (or pass --bin-dir)"
fi
if want collector; then
	[ -x "$collector" ] || die "$collector not found: run cargo build --release (or pass --bin-dir)"
fi

# [workspace.package] version in the root Cargo.toml.
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n1)
[ -n "$version" ] || die "no [workspace.package] version in $root/Cargo.toml"
license=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^license *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
maintainer="Sonde maintainers <sonde-maintainers@users.noreply.github.com>"
# The changelog's date: SOURCE_DATE_EPOCH (reproducible builds), else the
# last commit's, else now.
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
changelog_date=$(LC_ALL=C date -u -R -d "@$epoch")
year=$(date -u -d "@$epoch" +%Y)

if [ -z "${PHP_VERSION:-}" ] && command -v php-config >/dev/null 2>&1; then
	PHP_VERSION=$(php-config --version | cut -d. -f1,2)
	PHP_API=$(basename "$(php-config --extension-dir)")
fi
PHP_VERSION=${PHP_VERSION:-8.2}
PHP_API=${PHP_API:-20220829}
case "$PHP_API" in *[!0-9]*|'') die "PHP_API must be the numeric extension API (e.g. 20220829), not $PHP_API" ;; esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
# debian/<package>/ as debhelper lays it out: dpkg-shlibdeps expects that.
mkdir -p "$stage/debian"
printf 'Source: sonde\n\nPackage: sonde-agent\nArchitecture: any\n\nPackage: sonde-collector\nArchitecture: any\n' \
	>"$stage/debian/control"

# The versioned library dependencies of the ELF files given (libc6 (>= 2.34),
# libgcc-s1, ...), as dh_shlibdeps finds them; plain libc6 without
# dpkg-shlibdeps (dpkg-dev).
shlibdeps() {
	deps=""
	if command -v dpkg-shlibdeps >/dev/null 2>&1; then
		deps=$(cd "$stage" && dpkg-shlibdeps -O "$@" 2>/dev/null | sed -n 's/^shlibs:Depends=//p') || deps=""
	fi
	echo "${deps:-libc6}"
}

# Files every package carries: copyright, changelog, manual page.
common_files() {
	pkg=$1 name=$2
	install -d -m 0755 "$pkg/usr/share/doc/$name" "$pkg/usr/share/man/man1"
	cat >"$pkg/usr/share/doc/$name/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sonde

Files: *
Copyright: $year Sonde contributors
License: $license
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in the file /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
	chmod 0644 "$pkg/usr/share/doc/$name/copyright"
	# A native package (no Debian revision): changelog.gz, one entry.
	cat >"$stage/changelog" <<CHANGELOG
$name ($version) unstable; urgency=medium

  * Built from the Sonde source tree; its history is the change log.

 -- $maintainer  $changelog_date
CHANGELOG
	gzip -9nc "$stage/changelog" >"$pkg/usr/share/doc/$name/changelog.gz"
	gzip -9nc "$here/man/$name.1" >"$pkg/usr/share/man/man1/$name.1.gz"
	chmod 0644 "$pkg/usr/share/doc/$name/changelog.gz" "$pkg/usr/share/man/man1/$name.1.gz"
}

# Maintainer scripts from packaging/debian/<package>.<script>.
scripts() {
	pkg=$1 name=$2
	for script in postinst prerm postrm; do
		sed "s|@PHP_VERSION@|$PHP_VERSION|g" "$here/debian/$name.$script" >"$pkg/DEBIAN/$script"
		chmod 0755 "$pkg/DEBIAN/$script"
	done
}

# md5sums, control (from stdin, Installed-Size added) and the .deb.
finish() {
	pkg=$1 name=$2
	(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
		xargs md5sum) >"$pkg/DEBIAN/md5sums"
	chmod 0644 "$pkg/DEBIAN/md5sums" "$pkg/DEBIAN/conffiles"
	size_kb=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
	sed "s/^Installed-Size:.*/Installed-Size: $size_kb/" >"$pkg/DEBIAN/control"
	mkdir -p "$out_dir"
	deb="$out_dir/${name}_${version}_${arch}.deb"
	dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
	echo "$deb"
}

build_agent() {
	pkg="$stage/debian/sonde-agent"
	install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
		"$pkg/etc/sonde" "$pkg/usr/lib/php/$PHP_API" "$pkg/etc/php/$PHP_VERSION/mods-available"
	install -m 0755 "$agent" "$pkg/usr/bin/sonde-agent"
	install -m 0644 "$ext" "$pkg/usr/lib/php/$PHP_API/sonde.so"
	if command -v strip >/dev/null 2>&1; then
		strip --strip-unneeded --remove-section=.comment --remove-section=.note \
			"$pkg/usr/bin/sonde-agent" "$pkg/usr/lib/php/$PHP_API/sonde.so"
	fi
	install -m 0644 "$root/systemd/sonde-agent.service" "$pkg/lib/systemd/system/sonde-agent.service"
	# The token lives here: root only (postinst repeats it for upgrades).
	install -m 0640 "$here/agent.toml" "$pkg/etc/sonde/agent.toml"
	sed "s|/etc/php/8.2/|/etc/php/$PHP_VERSION/|" "$here/sonde.ini" \
		>"$pkg/etc/php/$PHP_VERSION/mods-available/sonde.ini"
	chmod 0644 "$pkg/etc/php/$PHP_VERSION/mods-available/sonde.ini"
	common_files "$pkg" sonde-agent
	# Where the unit's Documentation= points.
	for doc in agent.md fleet.md; do
		install -m 0644 "$root/docs/$doc" "$pkg/usr/share/doc/sonde-agent/$doc"
	done
	scripts "$pkg" sonde-agent
	printf '/etc/sonde/agent.toml\n/etc/php/%s/mods-available/sonde.ini\n' "$PHP_VERSION" \
		>"$pkg/DEBIAN/conffiles"
	depends=$(shlibdeps -e "$pkg/usr/bin/sonde-agent" -e "$pkg/usr/lib/php/$PHP_API/sonde.so")
	finish "$pkg" sonde-agent <<CONTROL
Package: sonde-agent
Version: $version
Architecture: $arch
Maintainer: $maintainer
Section: net
Priority: optional
Installed-Size:
Depends: $depends, adduser, phpapi-$PHP_API
Recommends: php$PHP_VERSION-fpm
Description: Sonde APM host agent and PHP $PHP_VERSION extension
 The PHP extension records every request (SQL, external calls, errors)
 and sends it to the local agent over a Unix socket; the agent spools and
 streams it to the Sonde collector. On AWS the agent reports its instance
 identity and Auto Scaling group, and deregisters as terminated on scale-in.
CONTROL
}

build_collector() {
	pkg="$stage/debian/sonde-collector"
	install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/sonde"
	install -m 0755 "$collector" "$pkg/usr/bin/sonde-collector"
	if command -v strip >/dev/null 2>&1; then
		strip --strip-unneeded --remove-section=.comment --remove-section=.note \
			"$pkg/usr/bin/sonde-collector"
	fi
	install -m 0644 "$root/systemd/sonde-collector.service" \
		"$pkg/lib/systemd/system/sonde-collector.service"
	# Tokens and the console password: postinst gives it to the group
	# sonde-collector (the user the unit runs as).
	install -m 0640 "$here/collector.toml" "$pkg/etc/sonde/collector.toml"
	common_files "$pkg" sonde-collector
	install -m 0644 "$root/docs/collector.md" "$pkg/usr/share/doc/sonde-collector/collector.md"
	scripts "$pkg" sonde-collector
	echo /etc/sonde/collector.toml >"$pkg/DEBIAN/conffiles"
	depends=$(shlibdeps -e "$pkg/usr/bin/sonde-collector")
	finish "$pkg" sonde-collector <<CONTROL
Package: sonde-collector
Version: $version
Architecture: $arch
Maintainer: $maintainer
Section: net
Priority: optional
Installed-Size:
Depends: $depends, adduser
Description: Sonde APM collector: ingest, storage, JSON API and console
 Sonde agents stream the requests their PHP extension recorded to the
 collector over gRPC. It stores each one once in an embedded database and
 serves the JSON API, the web console and alerts. Agents on AWS that are
 scaled in are shown as terminated, not as outages.
CONTROL
}

if want agent; then build_agent; fi
if want collector; then build_collector; fi
