#!/bin/sh
# Lays out the keyless image's filesystem in OUT_DIR: the static binary, the CA certificates, a
# numeric non-root user, and the two directories volumes are mounted over (owned by that user, so
# that a fresh named volume inherits a writable root). The Dockerfile's `rootfs` stage runs it, and
# so does scripts/image, which builds the same runtime stage with podman from a local binary.
#
#   docker/rootfs.sh BINARY CA_BUNDLE OUT_DIR
set -eu
if [ "$#" -ne 3 ]; then
  echo "usage: $0 BINARY CA_BUNDLE OUT_DIR" >&2
  exit 2
fi
binary=$1 ca_bundle=$2 out=$3
uid=65532

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/var/lib/keyless-emulator" "$out/run/keyless"
cp "$binary" "$out/usr/local/bin/keyless"
chmod 0755 "$out/usr/local/bin/keyless"
cp "$ca_bundle" "$out/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$out/etc/ssl/certs/ca-certificates.crt"
# Names for the numbers, for tools that print them; nothing in keyless needs them.
printf 'root:x:0:0:root:/root:/sbin/nologin\nkeyless:x:%s:%s:keyless:/nonexistent:/sbin/nologin\n' "$uid" "$uid" \
  >"$out/etc/passwd"
printf 'root:x:0:\nkeyless:x:%s:\n' "$uid" >"$out/etc/group"
chmod 0644 "$out/etc/passwd" "$out/etc/group"
chmod 0755 "$out/var/lib/keyless-emulator" "$out/run/keyless"
chown "$uid:$uid" "$out/var/lib/keyless-emulator" "$out/run/keyless"
