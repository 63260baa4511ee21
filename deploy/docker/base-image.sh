#!/usr/bin/env bash
# A local stand-in for the python:3.11-slim-bookworm base image, made from Debian's own
# packages: for machines that can build images but cannot pull them (no registry access).
#
#   deploy/docker/base-image.sh            # prints the image name, building it only if missing
#   buildah bud --build-arg BASE_IMAGE="$(deploy/docker/base-image.sh)" ...
#
# It runs `debootstrap --variant=minbase` with Python 3.11 (python3, python3-venv: the
# Dockerfile's build stage makes a virtual environment) and passwd (useradd, as the
# official image has), trims documentation and package caches, and imports the tree into
# the local container storage with `podman import`. The tag carries a hash of this script
# (suite, packages, trimming), so a changed recipe makes a new image and an unchanged one
# is reused: the script is idempotent and cheap once the image exists. Needs root,
# debootstrap, podman, and a reachable Debian mirror (MIRROR, default deb.debian.org).
set -euo pipefail

SUITE=bookworm
PACKAGES=python3,python3-venv,passwd,ca-certificates
MIRROR=${MIRROR:-http://deb.debian.org/debian}
REPO=${BASE_REPO:-localhost/lstm-stream-base}

key=$(sha256sum "$0" | cut -c1-12)
image="$REPO:$SUITE-$key"
if podman image exists "$image"; then
    echo "$image"
    exit 0
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/lstm-stream-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "base-image: debootstrap $SUITE ($PACKAGES) into $root" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
# What the slim image also leaves out: downloaded packages, package lists, docs, caches.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root"/debootstrap
tar -C "$root" --numeric-owner -c . |
    podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image" >&2
echo "$image"
