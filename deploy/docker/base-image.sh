#!/usr/bin/env bash
# A local stand-in for the python:3.11-slim-bookworm base image, made from Debian's own
# packages: for machines that can build images but cannot pull them (no registry access).
#
#   deploy/docker/base-image.sh            # prints the image name, building it only if missing
#   buildah bud --build-arg BASE_IMAGE="$(deploy/docker/base-image.sh)" ...
#
# It runs `debootstrap --variant=minbase` with Python 3.11 (python3, python3-venv: the
# Dockerfile makes virtual environments), passwd (useradd, as the official image has) and
# ca-certificates straight into the root of an empty buildah container, trims documentation
# and package caches, and commits it to the local container storage. The tag carries a hash
# of this script (suite, packages, trimming), so a changed recipe makes a new image and an
# unchanged one is reused: the script is idempotent and cheap once the image exists.
# Needs root, buildah, debootstrap and a reachable Debian mirror (MIRROR, default
# deb.debian.org). Progress goes to stderr, the image name alone to stdout.
set -euo pipefail

SUITE=bookworm
PACKAGES=python3,python3-venv,passwd,ca-certificates
MIRROR=${MIRROR:-http://deb.debian.org/debian}
REPO=${BASE_REPO:-localhost/lstm-stream-base}

key=$(sha256sum "$0" | cut -c1-12)
image="$REPO:$SUITE-$key"
if buildah inspect --type image "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi

ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")
echo "base-image: debootstrap $SUITE ($PACKAGES) into $ctr" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
# What the slim image also leaves out: downloaded packages, package lists, docs, caches.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root"/debootstrap
buildah umount "$ctr" >/dev/null
buildah config --env LANG=C.UTF-8 --cmd '["python3"]' "$ctr"
buildah commit --quiet "$ctr" "$image" >&2
echo "$image"
