#!/usr/bin/env bash
# Builds the image from the Dockerfile with Debian's buildah, without a Docker engine and without
# pulling the official base image (docs/image.md):
#
#   1. a stand-in for the Dockerfile's base (FROM python:3.11.14-slim-bookworm): Debian bookworm
#      made with debootstrap, with its python3 (3.11), python3-venv, python-is-python3 (`python`)
#      and ca-certificates; built once and cached as a tarball in .cache/image-base/ (git-ignored);
#   2. imported into buildah's storage under the Dockerfile's exact FROM name (localhost/<name>;
#      a pinned @sha256: digest is dropped, in a copy of the Dockerfile: the stand-in cannot match it);
#   3. buildah bud --isolation chroot --network host, pip reaching PyPI from inside the build.
#
# Usage: scripts/build-image.sh [TAG]        (default localhost/keymigration:dev; root, or sudo)
# Environment: CA_BUNDLE    host CA bundle bind-mounted over the build's
#                           /etc/ssl/certs/ca-certificates.crt (default: that same host file, which
#                           also holds this machine's local CAs; empty: no mount)
#              DEBIAN_MIRROR  for debootstrap (default http://deb.debian.org/debian)
#              HTTP(S)_PROXY, NO_PROXY (either case) are passed as build arguments when set.
# Prints the times taken and the image size; the last line is `image: TAG SIZE`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=CA_BUNDLE,DEBIAN_MIRROR,HTTP_PROXY,HTTPS_PROXY,NO_PROXY,http_proxy,https_proxy,no_proxy "$0" "$@"
fi

IMAGE=${1:-localhost/keymigration:dev}
CACHE=.cache/image-base
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}

log() { echo "build-image: $*"; }
elapsed() { echo $(( $(date +%s) - $1 )); }

# -- tools ------------------------------------------------------------------------------------
missing=()
for p in buildah debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- the base name: the Dockerfile's FROM, the same in every stage ----------------------------
mapfile -t froms < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | sort -u)
if [ ${#froms[@]} -ne 1 ]; then
  echo "build-image: expected one base image name in the Dockerfile's FROM lines, found: ${froms[*]}" >&2
  exit 1
fi
FROM_NAME=${froms[0]}
DOCKERFILE=Dockerfile
if [[ "$FROM_NAME" == *@sha256:* ]]; then
  # A pinned digest names the official image, which the stand-in cannot be: build from a copy
  # of the Dockerfile whose FROM lines keep the tag only.
  FROM_NAME=${FROM_NAME%@sha256:*}
  mkdir -p .cache
  DOCKERFILE=.cache/Dockerfile.stand-in-base
  sed -E 's/^([Ff][Rr][Oo][Mm][[:space:]]+[^[:space:]]+)@sha256:[0-9a-f]+/\1/' Dockerfile > "$DOCKERFILE"
  log "FROM pins a digest: building from $DOCKERFILE, the same without it"
fi
name=${FROM_NAME#docker.io/}
BASE=localhost/${name#library/}
# What the stand-in is made of; a different key rebuilds the cached base.
KEY=$(printf '%s\n' "v1" "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-16)

# -- 1. the debootstrap base, cached ------------------------------------------------------------
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9  # one build at a time on this cache and this storage
TARBALL=$CACHE/rootfs-$KEY.tar
if [ ! -s "$TARBALL" ]; then
  start=$(date +%s)
  rootfs=$CACHE/rootfs.tmp
  cleanup_rootfs() {
    # debootstrap mounts /proc and /sys inside the target; never delete through a mount.
    findmnt -rn -o TARGET | grep -F "$(realpath -m "$rootfs")/" | sort -r | xargs -r -n1 umount -l || true
    rm -rf --one-file-system "$rootfs"
  }
  trap cleanup_rootfs EXIT
  cleanup_rootfs
  log "debootstrap $SUITE (+ $PACKAGES) from $MIRROR"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Slim like debian:bookworm-slim (the official python slim images' base): no package caches,
  # apt lists, manuals, info pages or translations; only the copyright files of /usr/share/doc.
  (
    cd "$rootfs"
    rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/* \
      usr/share/man/* usr/share/info/* usr/share/locale/* var/log/*.log var/log/apt/*
    find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
    find usr/share/doc -mindepth 1 -type d -empty -delete
    rm -f etc/resolv.conf etc/hostname  # the runtime's, as in any image
  )
  # pyproject.toml: requires-python >=3.11 (bookworm has 3.11.2)
  chroot "$rootfs" python -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11), sys.version'
  tar -C "$rootfs" --numeric-owner -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
  find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' -not -name "rootfs-$KEY.tar" -delete
  cleanup_rootfs
  trap - EXIT
  log "base built in $(elapsed "$start") s ($(du -h "$TARBALL" | cut -f1) tarball, $TARBALL)"
else
  log "base: reusing $TARBALL"
fi

# -- 2. the base in buildah's storage, under the FROM name --------------------------------------
label=io.keymigration.image-base
if [ "$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$label\"}}" "$BASE" 2>/dev/null)" != "debootstrap-$KEY" ]; then
  start=$(date +%s)
  ctr=$(buildah from --pull=false scratch)
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" --numeric-owner -xpf "$TARBALL"
  buildah umount "$ctr" >/dev/null
  # The official image's configuration that matters: PATH, LANG, CMD.
  buildah config --os linux --arch "$(dpkg --print-architecture)" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 --label "$label=debootstrap-$KEY" \
    --label "org.opencontainers.image.description=stand-in for $FROM_NAME: Debian $SUITE by debootstrap, python3 from Debian" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
  trap - EXIT
  log "base imported as $BASE in $(elapsed "$start") s"
else
  log "base: $BASE already in buildah's storage"
fi

# -- 3. the image -------------------------------------------------------------------------------
# --format docker: what `docker build` writes (the OCI format drops HEALTHCHECK); --pull=never: the
# base is the local stand-in, never docker.io's; --layers: rebuilds reuse unchanged steps.
args=(--isolation chroot --network host --pull=never --layers --format docker -t "$IMAGE")
if [ -n "$CA_BUNDLE" ] && [ ! -f "$CA_BUNDLE" ]; then
  log "no CA bundle at $CA_BUNDLE: building with the base's own certificates"
  CA_BUNDLE=
fi
if [ -n "$CA_BUNDLE" ]; then
  # Debian's pip (the stand-in's) trusts /etc/ssl/certs/ca-certificates.crt; the host's copy also
  # holds this machine's local CAs (e.g. an intercepting egress proxy). A build-time mount only:
  # nothing of it is in the image.
  args+=(--volume "$(realpath "$CA_BUNDLE"):/etc/ssl/certs/ca-certificates.crt:ro")
fi
for v in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  if [ -n "${!v:-}" ]; then args+=(--build-arg "$v=${!v}"); fi
done
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
start=$(date +%s)
buildah bud "${args[@]}" --build-arg "REVISION=$revision" -f "$DOCKERFILE" .
log "image built in $(elapsed "$start") s"
size=$(buildah images --format '{{.Size}}' "$IMAGE")
log "image size $size (uncompressed; the base $(buildah images --format '{{.Size}}' "$BASE"))"
echo "image: $IMAGE $size"
