"""Print the runtime requirements of pyproject.toml, one per line, for the image's pip.

Used by deploy/docker/Dockerfile's build stage (and by the tests):

    python3 requirements.py PYPROJECT [TENSORFLOW_EXTRA]

Only ``[project] dependencies`` are printed: never the test, checks or dev extras. A
non-empty TENSORFLOW_EXTRA (``and-cuda`` for the GPU image) is added to the tensorflow
requirement, keeping its version range. Standard library only: it runs on the bare base
image before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(pyproject: str, tensorflow_extra: str = "") -> list[str]:
    """The dependencies of ``pyproject``, tensorflow's with ``[tensorflow_extra]`` if given."""
    with open(pyproject, "rb") as fp:
        deps: list[str] = tomllib.load(fp)["project"]["dependencies"]
    if not tensorflow_extra:
        return deps
    # the name alone: not tensorflow-io or tensorflow-cpu; an extra already there is replaced
    pattern = re.compile(r"^tensorflow(\[[^\]]*\])?(?=[\s<>=!~;]|$)")
    return [pattern.sub(f"tensorflow[{tensorflow_extra}]", d) for d in deps]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: {sys.argv[0]} PYPROJECT [TENSORFLOW_EXTRA]")
    print("\n".join(requirements(*sys.argv[1:])))
