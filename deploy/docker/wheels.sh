#!/usr/bin/env bash
# Download the image's runtime dependencies as wheels, for a build that cannot reach a
# package index (`--build-arg WHEELS=DIR`, see deploy/docker/README.md).
#
#   deploy/docker/wheels.sh build/docker-wheels
#
# What goes in DIR: the [project] dependencies of pyproject.toml (not the test/dev extras)
# with everything they pull in, as CPython 3.11 manylinux x86_64 wheels (what the image's
# Python runs), pinned to the versions installed in the virtual environment of PYTHON
# (default .venv/bin/python) so the image runs what the tests ran; plus setuptools and wheel,
# which build the project itself inside the image. A key of the dependencies and the pins is
# written to DIR/.key: when it matches, nothing is downloaded again.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:?usage: $0 DIR}
py=${PYTHON:-$root/.venv/bin/python}

mapfile -t deps < <("$py" - "$root/pyproject.toml" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as fp:
    print("\n".join(tomllib.load(fp)["project"]["dependencies"]))
PY
)
deps+=("setuptools>=68" "wheel")

mkdir -p "$dest"
pins="$dest/.constraints.txt"
"$py" -m pip list --format=freeze --exclude-editable |
    grep -viE '^(pip|setuptools|wheel)==' >"$pins.new"
key=$(printf '%s\n' "${deps[@]}" | cat - "$pins.new" | sha256sum | cut -c1-16)
if [[ -f "$dest/.key" && "$(cat "$dest/.key")" == "$key" ]]; then
    rm -f "$pins.new"
    exit 0
fi
mv "$pins.new" "$pins"
rm -f "$dest/.key"

# pip takes a wheel only for a platform tag it is given: every manylinux glibc level up to
# Debian bookworm's 2.36, and pure-Python wheels.
platforms=(--platform any --platform manylinux1_x86_64 --platform manylinux2010_x86_64
    --platform manylinux2014_x86_64)
for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done

"$py" -m pip download --quiet --dest "$dest" --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
    --constraint "$pins" "${deps[@]}"
echo "$key" >"$dest/.key"
