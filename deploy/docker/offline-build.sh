#!/usr/bin/env bash
# Build the image on a machine that can neither pull base images nor reach a package index
# from inside a build: the local Debian base (base-image.sh) and the wheels (wheels.sh) are
# made first, side by side, then `buildah bud` installs from them alone.
#
#   deploy/docker/offline-build.sh TAG [MODEL]    # MODEL: a .keras file inside the project
#
# Layers are cached (--layers): a second build with another MODEL redoes only the model's
# layer. The docker image format keeps the HEALTHCHECK (OCI has none). Timings go to stderr
# as `offline-build: <step> <seconds> s`, the image id alone to stdout. Needs root, buildah,
# debootstrap, a Debian mirror and PyPI from the host.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/deploy/docker"
tag=${1:?usage: $0 TAG [MODEL]}
model=${2:-}
wheels=build/docker-wheels # relative to the build context, the project root

t0=$SECONDS
base_out=$(mktemp)
trap 'rm -f "$base_out"' EXIT
"$here/base-image.sh" >"$base_out" &
base_pid=$!
"$here/wheels.sh" "$root/$wheels" >&2
echo "offline-build: wheels $((SECONDS - t0)) s" >&2
wait "$base_pid"
base=$(tail -n 1 "$base_out")
echo "offline-build: base $((SECONDS - t0)) s ($base)" >&2

t1=$SECONDS
model_arg=()
if [[ -n "$model" ]]; then
    model_arg=(--build-arg "MODEL=$model")
fi
buildah bud --isolation chroot --layers --pull-never --format docker --quiet \
    --file "$here/Dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "WHEELS=$wheels" "${model_arg[@]}" \
    --tag "$tag" "$root" >&2
echo "offline-build: bud $((SECONDS - t1)) s, total $((SECONDS - t0)) s" >&2
buildah inspect --type image --format '{{.FromImageID}}' "$tag"
