#!/usr/bin/env bash
# Builds the controller's Debian package with dpkg-deb alone (no debhelper, no cargo-deb):
#   deploy/debian/build.sh [--binary PATH] [--version X.Y.Z] [--out-dir DIR] [--compress TYPE]
# --binary   the kcdsync-controller to package (default: the release build,
#            $CARGO_TARGET_DIR or target/, release/kcdsync-controller;
#            `cargo build --release --locked -p kcdsync-controller` makes it)
# --version  the package version (default: the workspace version in Cargo.toml)
# --out-dir  where kcdsync-controller_<version>_<arch>.deb goes (default: <target>/debian)
# --compress xz (default), gzip, zstd or none: dpkg-deb's -Z
# Prints the path of the package. Reproducible: the same inputs give the same bytes (file
# times are SOURCE_DATE_EPOCH, default the last commit's time; owners root; one compressor
# thread). Needs dpkg-shlibdeps (dpkg-dev) for Depends and objcopy (binutils).
# See deploy/debian/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}

binary=$target/release/kcdsync-controller
version=
out_dir=$target/debian
compress=xz
while [[ $# -gt 0 ]]; do
    case $1 in
    --binary) binary=$2 ;;
    --version) version=$2 ;;
    --out-dir) out_dir=$2 ;;
    --compress) compress=$2 ;;
    *)
        sed -n '2,14s/^# \{0,1\}//p' "$0" >&2
        exit 2
        ;;
    esac
    shift 2
done

if [[ ! -f $binary ]]; then
    echo "$binary: no such file (cargo build --release --locked -p kcdsync-controller, or --binary PATH)" >&2
    exit 1
fi
if [[ -z $version ]]; then
    # [workspace.package] version = "x.y.z": the first version line of the workspace manifest.
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)
fi
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
    echo "not a Debian version: '$version'" >&2
    exit 2
fi
command -v objcopy >/dev/null || {
    echo "objcopy is missing: apt-get install binutils" >&2
    exit 1
}
command -v dpkg-shlibdeps >/dev/null || {
    echo "dpkg-shlibdeps is missing: apt-get install dpkg-dev" >&2
    exit 1
}

# The architecture is the binary's (ELF e_machine), not this machine's: a cross-built
# binary gets its own.
case $(od -An -tx1 -j18 -N2 "$binary" | tr -d ' \n') in
3e00) arch=amd64 ;;
b700) arch=arm64 ;;
*)
    echo "$binary: not an x86-64 or aarch64 ELF executable" >&2
    exit 1
    ;;
esac

if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || stat -c %Y "$repo/Cargo.toml")
fi
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants a source tree: debian/control, the package root under debian/<name>.
root=$work/debian/kcdsync-controller
umask 022
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/usr/share/doc/kcdsync-controller" "$root/etc/kcdsync" "$root/var/lib/kcdsync"
# Owners are all root in the archive (--root-owner-group); postinst gives these two to the
# kcdsync group/user. 0750 from the first unpack: nothing readable by others in between.
chmod 0750 "$root/etc/kcdsync" "$root/var/lib/kcdsync"

# Not stripped: the release profile keeps line tables so that a panic's backtrace names file
# and line. Compressed instead (zlib, which std's backtrace reads): 130 MB -> 51 MB installed.
install -m 0755 "$binary" "$root/usr/bin/kcdsync-controller"
objcopy --compress-debug-sections=zlib "$root/usr/bin/kcdsync-controller"

# The unit is deploy/systemd's (one source for the hardening), with the package's paths.
sed -e 's|/usr/local/bin/|/usr/bin/|g' \
    -e 's|file:///usr/share/doc/kcdsync/|file:///usr/share/doc/kcdsync-controller/|' \
    "$repo/deploy/systemd/kcdsync-controller.service" >"$root/lib/systemd/system/kcdsync-controller.service"
if grep -q /usr/local "$root/lib/systemd/system/kcdsync-controller.service"; then
    echo "deploy/systemd/kcdsync-controller.service: a /usr/local path is left after rewriting" >&2
    exit 1
fi
install -m 0644 "$here/kcdsync-controller.sysusers" "$root/usr/lib/sysusers.d/kcdsync-controller.conf"

# The conffile: the example config behind a line that refuses to start (controller.toml.head),
# with the store in the state directory (the example's default, beside the config, is
# read-only under the unit's ProtectSystem=strict).
store='url = "sqlite:///var/lib/kcdsync/kcdsync.db?mode=rwc"'
{
    cat "$here/controller.toml.head"
    sed "s|^# $store\$|$store|" "$repo/deploy/controller.example.toml"
} >"$root/etc/kcdsync/controller.toml"
chmod 0640 "$root/etc/kcdsync/controller.toml"
if ! grep -qx "$store" "$root/etc/kcdsync/controller.toml"; then
    echo "deploy/controller.example.toml has no '# $store' line to enable" >&2
    exit 1
fi

doc=$root/usr/share/doc/kcdsync-controller
install -m 0644 "$repo/README.md" "$doc/README.md"
install -m 0644 "$here/README.md" "$doc/README.Debian"
cat >"$doc/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kcdsync

Files: *
Copyright: kcdsync authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
printf 'kcdsync-controller (%s) unstable; urgency=medium\n\n  * Built by deploy/debian/build.sh.\n\n -- kcdsync <dev@kcdsync.invalid>  %s\n' \
    "$version" "$date" | gzip -9n >"$doc/changelog.Debian.gz"
chmod 0644 "$doc/copyright" "$doc/changelog.Debian.gz"

for s in postinst prerm postrm; do
    install -m 0755 "$here/$s" "$root/DEBIAN/$s"
done
echo /etc/kcdsync/controller.toml >"$root/DEBIAN/conffiles"

# Depends: the shared libraries the binary links (as dpkg-shlibdeps maps them to packages,
# with the versions its symbols need), and what postinst creates the user with.
printf 'Source: kcdsync\n\nPackage: kcdsync-controller\nArchitecture: any\n' >"$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O -edebian/kcdsync-controller/usr/bin/kcdsync-controller | sed -n 's/^shlibs:Depends=//p')
[[ -n $shlibs ]] || {
    echo "dpkg-shlibdeps found no dependencies for $binary" >&2
    exit 1
}
installed_size=$(du -s -k --apparent-size --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: kcdsync-controller
Version: $version
Architecture: $arch
Maintainer: kcdsync <dev@kcdsync.invalid>
Installed-Size: $installed_size
Depends: $shlibs, systemd-sysusers | adduser
Section: admin
Priority: optional
Description: keeps Hyper-V live-migration Kerberos delegation right in Active Directory
 Since Windows Server 2016, live migration of Hyper-V VMs between hosts
 needs Kerberos constrained delegation with protocol transition ("use any
 authentication protocol") from each host to every peer, for the
 "Microsoft Virtual System Migration Service" and "cifs" services. Without
 it, migrations fail with 0x8009030E.
 .
 The kcdsync controller is the only part of kcdsync holding AD write
 credentials. From migration groups declared in /etc/kcdsync/controller.toml
 it plans, guards (removals and first grants wait for approval), applies,
 verifies and audits each host's delegation over LDAPS, never touching
 entries it does not manage; it serves the kcdsync agents on the Hyper-V
 hosts (mTLS) and an API for orchestrators and kcdctl.
 .
 This package installs the kcdsync-controller binary, the systemd unit
 kcdsync-controller.service (run as the system user kcdsync, hardened), and
 a configuration template. Nothing is started until the template is edited:
 see /usr/share/doc/kcdsync-controller/README.Debian.
EOF
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles"

# debsums' list (as dh_md5sums: files but the conffile, which dpkg tracks itself).
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out_dir"
deb=$out_dir/kcdsync-controller_${version}_${arch}.deb
dpkg-deb --root-owner-group --threads-max=1 "-Z$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
