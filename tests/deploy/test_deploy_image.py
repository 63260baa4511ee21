"""The container image, really built and run without a daemon (buildah, chroot isolation).

No base image can be pulled here, so deploy/docker/offline-build.sh makes the base from
Debian's packages (base-image.sh: debootstrap, Python 3.11, committed to the local container
storage and kept there under a content-keyed tag) and the dependencies come as wheels from
the host (wheels.sh into build/docker-wheels, kept between runs): the offline path of
deploy/docker/Dockerfile. Its slow part starts in the background when the session begins
(tests/deploy/conftest.py); these tests run last and wait for it. The image is built with a
tiny model baked in, then run as its own non-root user: ``lstm-stream replay`` inside must
answer exactly as the host's replay of the same input, dead letters included; the
HEALTHCHECK recorded in the image is run inside it against the project's metrics server;
``run``'s settings pick up the image's model path and metrics port. Containers are removed
even on failure. The image stays, as ``localhost/lstm-stream:offline-test``, because it
holds the cached layers: a second run rebuilds only the model's layer and removes the image
it replaces.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import msgpack
import numpy as np
import pytest

from processor.cli import main as cli_main
from processor.codec import decode_dead_letter, decode_output, encode_input

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
FEATURES = 3
USER_ID = "10001"  # the Dockerfile's USER
TEST_IMAGE = "localhost/lstm-stream:offline-test"


def sh(*cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; a failure raises with its output (the test's message)."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def buildah(need_tool: Callable[[str], str]) -> str:
    need_tool("debootstrap")  # base-image.sh needs it
    return need_tool("buildah")


@pytest.fixture(scope="module")
def model_file() -> Iterator[Path]:
    """A tiny LSTM model inside the build context (build/*.keras is kept by .dockerignore),
    named by its content so a changed model never reuses a cached layer."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, FEATURES))
    out = keras.layers.Dense(2)(keras.layers.LSTM(8, return_sequences=True)(inp))
    scratch = ROOT / "build" / "docker-test-model.keras"
    scratch.parent.mkdir(exist_ok=True)
    keras.Model(inp, out).save(scratch)
    digest = hashlib.sha256(scratch.read_bytes()).hexdigest()[:12]
    path = scratch.with_name(f"docker-test-model-{digest}.keras")
    scratch.rename(path)
    yield path
    path.unlink(missing_ok=True)


def image_id(buildah: str, name: str) -> str | None:
    """The id of the image called ``name``, or None when there is none."""
    done = subprocess.run(
        [buildah, "inspect", "--type", "image", "--format", "{{.FromImageID}}", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


@pytest.fixture(scope="module")
def image(buildah: str, model_file: Path, background_image_build: Any) -> str:
    """Build the image offline as TEST_IMAGE (deploy/docker/offline-build.sh); returns its id.

    The slow part, every layer but the model's, was started in the background when the
    session began (see tests/deploy/conftest.py): this waits for it, then adds the model's
    layer on top from the cache. The image stays in the local storage after the test: it
    holds the build's cached layers, so the next run rebuilds only the model's layer. The
    previous run's image, whose model layer differs, is removed by its id."""
    if background_image_build is not None:
        rc, log = background_image_build.wait()
        assert rc == 0, f"the background image build failed ({rc}):\n{log[-6000:]}"
    previous = image_id(buildah, TEST_IMAGE)
    sh(
        str(DOCKER / "offline-build.sh"),
        TEST_IMAGE,
        str(model_file.relative_to(ROOT)),
        timeout=1800,
    )
    built = image_id(buildah, TEST_IMAGE)
    assert built is not None
    if previous is not None and previous != built:
        subprocess.run([buildah, "rmi", previous], capture_output=True, timeout=120)
    return built


@pytest.fixture()
def container(buildah: str, image: str) -> Iterator[str]:
    """A working container of the image (buildah run executes in it), removed afterwards."""
    name = sh(buildah, "from", "--pull-never", image).stdout.split()[-1]
    try:
        yield name
    finally:
        subprocess.run([buildah, "rm", name], capture_output=True, timeout=120)


def records(data: bytes) -> list[bytes]:
    """Concatenated msgpack objects -> the raw bytes of each."""
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=True)
    out, pos = [], 0
    for _ in unpacker:
        out.append(data[pos : unpacker.tell()])
        pos = unpacker.tell()
    return out


def make_input() -> tuple[bytes, list[str]]:
    """Interleaved records of three streams, then bad records; (input, their reasons)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, FEATURES)).astype(np.float32)
    good = [
        encode_input(f"s{s}", t, x[s, t], ts=100 + t) for t in range(5) for s in rng.permutation(3)
    ]
    bad = {
        "shape_mismatch": encode_input("b", 0, np.zeros(FEATURES + 1, np.float32)),
        "non_finite": encode_input("b", 0, np.array([1.0, np.inf, 0.0], np.float32)),
        "non_increasing_seq": encode_input("s1", 2, x[1, 2]),
    }
    return b"".join(good) + b"".join(bad.values()), list(bad)


def test_replay_in_the_image_as_non_root_equals_the_host(
    buildah: str, container: str, model_file: Path, tmp_path: Path
) -> None:
    data, reasons = make_input()
    shared = tmp_path / "data"
    shared.mkdir()
    shared.chmod(0o777)  # the image's user writes its outputs here
    (shared / "in.msgpack").write_bytes(data)
    host_out, host_dlq = tmp_path / "out.msgpack", tmp_path / "dlq.msgpack"
    args = ["--max-batch", "4", "--cache-capacity", "8"]
    code = cli_main(
        [
            *("replay", "--model", str(model_file), "--input", str(shared / "in.msgpack")),
            *("--output", str(host_out), "--dlq", str(host_dlq), *args),
        ]
    )
    assert code == 0

    # The baked-in model (MODEL build arg) at its documented path, read by the image's user.
    script = (
        "id -u && exec lstm-stream replay --model /models/model.keras --input /data/in.msgpack"
        " --output /data/out.msgpack --dlq /data/dlq.msgpack " + " ".join(args)
    )
    done = sh(
        buildah, "run", "--isolation", "chroot", "-v", f"{shared}:/data", container,
        "--", "sh", "-c", script,
    )  # fmt: skip
    assert done.stdout.split()[0] == USER_ID != "0"
    assert (shared / "out.msgpack").stat().st_uid == int(USER_ID)

    got = [decode_output(r) for r in records((shared / "out.msgpack").read_bytes())]
    want = [decode_output(r) for r in records(host_out.read_bytes())]
    assert len(want) == 15
    assert [(o["stream"], o["seq"], o["ts"]) for o in got] == [
        (o["stream"], o["seq"], o["ts"]) for o in want
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g["y"], w["y"], rtol=1e-5, atol=1e-6)

    dead = [decode_dead_letter(r) for r in records((shared / "dlq.msgpack").read_bytes())]
    assert [d["reason"] for d in dead] == reasons
    assert [d["record"] for d in dead] == records(data)[-len(reasons) :]


def test_image_healthcheck_probes_the_metrics_server(
    buildah: str, image: str, container: str
) -> None:
    config = json.loads(sh(buildah, "inspect", "--type", "image", image).stdout)
    docker = config["Docker"]["config"]
    health = docker["Healthcheck"]["Test"]
    assert health[0] == "CMD" and "/healthz" in " ".join(health)
    assert docker["Entrypoint"] == ["lstm-stream"]
    assert docker["User"].split(":")[0] == USER_ID
    env = dict(e.split("=", 1) for e in docker["Env"])
    assert env["LSTM_STREAM_MODEL"] == "/models/model.keras"

    # Inside the image: the recorded probe passes against the project's metrics server on
    # the port named by LSTM_STREAM_METRICS_PORT and fails once nothing listens there; run's
    # settings take the image's model path and metrics port; no test extras are installed.
    probe = f"""
import importlib.util, os, subprocess, sys
from prometheus_client import CollectorRegistry
from processor.obs.server import MetricsServer
from processor.kafka.settings import settings_from_args
server = MetricsServer(CollectorRegistry(), host="127.0.0.1", port=0)
server.start()
env = {{**os.environ, "LSTM_STREAM_METRICS_PORT": str(server.port)}}
up = subprocess.run({health[1:]!r}, env=env, capture_output=True).returncode
server.close()
down = subprocess.run({health[1:]!r}, env=env, capture_output=True).returncode
s = settings_from_args(environ={{**os.environ, "LSTM_STREAM_INPUT_TOPIC": "i",
                                 "LSTM_STREAM_OUTPUT_TOPIC": "o"}})
print(up, down, s.engine.model, s.metrics_port, importlib.util.find_spec("pytest") is None)
"""
    done = sh(
        buildah, "run", "--isolation", "chroot", container, "--", "python", "-c", probe,
        timeout=300,
    )  # fmt: skip
    up, down, model, port, no_pytest = done.stdout.split()[-5:]
    assert (up, down) == ("0", "1"), done.stderr
    assert model == "/models/model.keras"
    assert port == "9464"
    assert no_pytest == "True"
