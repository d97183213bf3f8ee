#!/usr/bin/env bash
# Trims a `debootstrap --variant=minbase bookworm` root file system into the equivalent of
# Debian's official debian:bookworm-slim image, before `docker import`:
#
#   - dpkg skips documentation, man pages, info pages and translations on every later
#     install (the slim images' path-exclude rules), and what debootstrap installed of them
#     is removed now;
#   - apt keeps no package caches or lists, never asks for translations, and a service's
#     postinst never starts a daemon inside an image build (policy-rc.d);
#   - apt's sources are the official image's: bookworm, bookworm-updates, bookworm-security;
#   - nothing of the build host is left (resolv.conf, hostname, logs).
#
# Usage: slim.sh ROOTFS   (run as root; called by scripts/lib/docker.sh)
set -euo pipefail
root=${1:?usage: slim.sh ROOTFS}
[[ -x $root/usr/bin/dpkg ]] || { echo "slim.sh: $root is not a Debian root file system" >&2; exit 1; }

cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
# as in Debian's official slim images
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG

cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
cat >"$root/etc/apt/apt.conf.d/docker-no-languages" <<'CFG'
Acquire::Languages "none";
CFG
cat >"$root/etc/apt/apt.conf.d/docker-gzip-indexes" <<'CFG'
Acquire::GzipIndexes "true";
CFG
cat >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests" <<'CFG'
Apt::AutoRemove::SuggestsImportant "false";
CFG

cat >"$root/usr/sbin/policy-rc.d" <<'SH'
#!/bin/sh
# no daemon starts inside an image build
exit 101
SH
chmod 0755 "$root/usr/sbin/policy-rc.d"

rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

# What debootstrap left that the exclusions above would not have installed.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
# Man page files go but their directories stay: some postinst scripts (OpenJDK's
# update-alternatives) link into /usr/share/man/man1 and fail when it is missing.
find "$root/usr/share/man" -mindepth 1 -not -type d -delete
rm -rf "$root/usr/share/groff/"* "$root/usr/share/info/"* \
    "$root/usr/share/lintian/"* "$root/usr/share/linda/"*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# Caches, lists and traces of the build host.
rm -rf "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb \
    "$root/var/cache/apt/archives/partial/"* "$root/var/lib/apt/lists/"* \
    "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old
mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
find "$root/var/log" -type f -delete
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
: >"$root/etc/machine-id"
