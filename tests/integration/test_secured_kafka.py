"""``run``, ``produce`` and ``tail`` against a SASL_SSL listener (TLS + SCRAM-SHA-512).

The session broker has no such listener, so this module starts its own private one with
``deploy/kafka-local/kafka.sh start --sasl`` (a throw-away CA and a random password), on
free ports, once for the module. Topics are created through its PLAINTEXT listener.

What is proven: records flow end to end through SASL_SSL with the credentials coming from
each source (``produce``: ``LSTM_STREAM_KAFKA_*`` variables; ``run``: a TOML ``[kafka]``
table with ``ssl_cafile``; ``tail``: that file through ``LSTM_STREAM_CONFIG``); a wrong
password, an untrusted CA and a plaintext client on the SASL port each end every command
within seconds, with exit code 3 and one error line naming the cause; and no password (the
right one or a wrong one) appears in any of their outputs or in the good run's ``/metrics``
(``--help`` with the variables set: ``tests/unit/kafka/test_kafka_security.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from durable_helpers import PrivateBroker  # type: ignore[import-not-found]
from kafka_helpers import (  # type: ignore[import-not-found]
    PYTHON,
    RunProcess,
    http_get,
    metric_total,
    subprocess_env,
    tiny_model,
)

__all__ = ["tiny_model"]

USER = "lstm-it"
MECHANISM = "SCRAM-SHA-512"
#: A failing command must be done within this many seconds, its imports (for ``run``,
#: TensorFlow's) included, on a busy 2-core machine ...
FAIL_WITHIN_S = 90
#: ... and ``run`` within this many from its first log line (the settings, logged once the
#: imports are done) to its exit: the connection fails at once, without a retry loop.
RUN_FAILS_WITHIN_S = 15
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) ", re.M)
#: stderr lines that are log records below WARNING (the commands log at INFO by default).
QUIET_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ")
OUTPUTS = "lstm_stream_records_out_total"


@dataclass(frozen=True)
class SecuredBroker:
    plaintext: str  # for the test's own admin work
    sasl: str  # the SASL_SSL listener
    cafile: str  # the broker's throw-away CA
    password: str
    other_cafile: str  # a CA that did not sign the broker's certificate


def _other_ca(directory: Path, openssl: str) -> str:
    """A throw-away CA of its own (nothing it signed is the broker's)."""
    key, cert = directory / "other-ca.key", directory / "other-ca.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
         "/CN=another throw-away CA"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return str(cert)


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, need_tool: Callable[[str], str]
) -> Iterator[SecuredBroker]:
    """A private broker with a SASL_SSL listener beside its PLAINTEXT one (module-wide)."""
    openssl = need_tool("openssl")
    need_tool("java")
    run_dir = tmp_path_factory.mktemp("kafka-sasl")
    password = secrets.token_hex(12)
    broker = PrivateBroker(run_dir, sasl={"USER": USER, "PASSWORD": password})
    t0 = time.monotonic()
    try:
        plaintext = broker.start()
        assert broker.last_start is not None
        sasl_addr = (run_dir / "sasl-bootstrap").read_text().strip()
        cafile = run_dir / "tls" / "ca.pem"
        assert sasl_addr == f"127.0.0.1:{broker.env['KAFKA_LOCAL_SASL_PORT']}"
        assert cafile.is_file()
        told = broker.last_start.stderr
        assert sasl_addr in told and str(cafile) in told  # told to the user
        print(f"\nkafka-local SASL broker {sasl_addr} ready in {time.monotonic() - t0:.1f}s")
        yield SecuredBroker(
            plaintext, sasl_addr, str(cafile), password, _other_ca(run_dir, openssl)
        )
    finally:
        broker.stop()


@pytest.fixture
async def topics(secured: SecuredBroker) -> AsyncIterator[tuple[str, str]]:
    """(input topic with 2 partitions, name of an output topic ``run`` creates)."""
    tag = secrets.token_hex(4)
    source, out = f"secured-in-{tag}", f"secured-out-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=secured.plaintext, request_timeout_ms=30000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, 2, 1)])
        yield source, out
    finally:
        await admin.close()


def _kafka_env(password: str, cafile: str) -> dict[str, str]:
    """The credentials as ``LSTM_STREAM_KAFKA_*`` variables."""
    return {
        "LSTM_STREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LSTM_STREAM_KAFKA_SASL_MECHANISM": MECHANISM,
        "LSTM_STREAM_KAFKA_SASL_PLAIN_USERNAME": USER,
        "LSTM_STREAM_KAFKA_SASL_PLAIN_PASSWORD": password,
        "LSTM_STREAM_KAFKA_SSL_CAFILE": cafile,
    }


def _kafka_toml(path: Path, password: str, cafile: str) -> Path:
    """The credentials as the ``[kafka]`` table of a settings file."""
    path.write_text(
        "[kafka]\n"
        'security_protocol = "SASL_SSL"\n'
        f'sasl_mechanism = "{MECHANISM}"\n'
        f'sasl_plain_username = "{USER}"\n'
        f'sasl_plain_password = "{password}"\n'
        f'ssl_cafile = "{cafile}"\n'
    )
    return path


@dataclass
class Done:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    ended: float  # time.time() at the exit

    def seconds_after_first_log_line(self) -> float:
        match = LOG_TIME.search(self.stderr)
        assert match, self.stderr[-3000:]
        start = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return self.ended - start


async def _command(args: list[str], env: dict[str, str], timeout: float = 120) -> Done:
    """``lstm-stream ARGS`` as a subprocess with ``env`` added to a clean environment."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "processor.cli", *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**subprocess_env(), **env},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"lstm-stream {' '.join(args)} still running after {timeout}s")
    return Done(
        proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - t0, time.time()
    )


def _assert_no_secret(texts: dict[str, str], *passwords: str) -> None:
    for where, text in texts.items():
        for password in passwords:
            assert password not in text, f"a password appears in {where}"


async def test_records_flow_end_to_end_through_sasl_ssl(
    secured: SecuredBroker, topics: tuple[str, str], tiny_model: str, tmp_path: Path
) -> None:
    source, out = topics
    streams, steps = 4, 10
    produced = await _command(
        ["produce", "--bootstrap-servers", secured.sasl, "--topic", source, "--streams",
         str(streams), "--count", str(streams * steps), "--rate", "0", "--shape", "4"],
        _kafka_env(secured.password, secured.cafile),
    )  # fmt: skip
    assert produced.rc == 0, produced.stderr
    assert f"produced {streams * steps} records" in produced.stdout

    config = _kafka_toml(tmp_path / "run.toml", secured.password, secured.cafile)
    run = RunProcess(
        ["--bootstrap-servers", secured.sasl, "--input-topic", source, "--output-topic", out,
         "--model", tiny_model, "--threads", "1", "--config", str(config),
         "--commit-interval-ms", "200", "--group-id", f"g-secured-{secrets.token_hex(4)}"],
        tmp_path / "run.log",
    )  # fmt: skip
    try:
        await run.wait_until(
            lambda: metric_total(http_get(run.url("/metrics"))[1], OUTPUTS) >= streams * steps,
            120,
            "every output",
        )
        status, metrics = http_get(run.url("/metrics"))
        assert status == 200 and metric_total(metrics, OUTPUTS) == streams * steps
        assert await run.terminate(60) == 0, run.text()
    finally:
        run.kill()

    tailed = await _command(
        ["tail", "--bootstrap-servers", secured.sasl, "--topic", out, "--from-beginning",
         "--max-records", str(streams * steps), "--idle-timeout", "20"],
        {"LSTM_STREAM_CONFIG": str(config)},
    )  # fmt: skip
    assert tailed.rc == 0, tailed.stderr
    rows = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert sorted((r["stream"], r["seq"]) for r in rows) == sorted(
        (f"s{i}", seq) for i in range(streams) for seq in range(steps)
    )
    assert all(r["kind"] == "output" and r["key"] == r["stream"] for r in rows)
    _assert_no_secret(
        {
            "produce's output": produced.stdout + produced.stderr,
            "run's output": run.log.read_text(),
            "run's /metrics": metrics,
            "tail's output": tailed.stdout + tailed.stderr,
        },
        secured.password,
    )


#: case -> (commands, the expected start of the error line after "lstm-stream CMD: ").
FAILURES: dict[str, tuple[tuple[str, ...], str]] = {
    "wrong-password": (
        ("run", "produce", "tail"),
        f"Kafka authentication failed at {{sasl}} (SASL {MECHANISM} as user '{USER}'): ",
    ),
    "untrusted-ca": (
        ("run", "produce", "tail"),
        "TLS certificate verification failed at {sasl}: ",
    ),
    "plaintext-client-on-the-sasl-port": (
        ("produce",),
        "Kafka at {sasl} closed the connection on the first request (security_protocol PLAINTEXT)",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_a_refused_connection_ends_each_command_with_one_error_line(
    secured: SecuredBroker, tiny_model: str, tmp_path: Path, case: str
) -> None:
    commands, expected = FAILURES[case]
    wrong = f"wrong-{secrets.token_hex(8)}"
    password = wrong if case == "wrong-password" else secured.password
    cafile = secured.other_cafile if case == "untrusted-ca" else secured.cafile
    env = _kafka_env(password, cafile)
    if case == "plaintext-client-on-the-sasl-port":
        env["LSTM_STREAM_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
    config = _kafka_toml(tmp_path / "run.toml", password, cafile)
    argv = {
        "run": ["run", "--bootstrap-servers", secured.sasl, "--input-topic", "never-read",
                "--output-topic", "never-written", "--model", tiny_model, "--threads", "1",
                "--config", str(config)],
        "produce": ["produce", "--bootstrap-servers", secured.sasl, "--topic", "never-written",
                    "--count", "5", "--rate", "0", "--shape", "4"],
        "tail": ["tail", "--bootstrap-servers", secured.sasl, "--topic", "never-read",
                 "--max-records", "1"],
    }  # fmt: skip
    # run reads its credentials from the file, the tools from the variables; all at once.
    done = await asyncio.gather(
        *(_command(argv[c], {} if c == "run" else env, FAIL_WITHIN_S + 60) for c in commands)
    )
    for command, result in zip(commands, done, strict=True):
        print(f"{case} {command}: exit {result.rc} after {result.seconds:.1f}s")
        loud = [line for line in result.stderr.splitlines() if not QUIET_LOG_LINE.match(line)]
        assert result.rc == 3, result.stderr[-3000:]
        assert len(loud) == 1, result.stderr[-3000:]
        assert loud[0].startswith(f"lstm-stream {command}: " + expected.format(sasl=secured.sasl))
        assert result.seconds < FAIL_WITHIN_S
        if command == "run":
            after_imports = result.seconds_after_first_log_line()
            print(f"  {after_imports:.1f}s after its first log line")
            assert after_imports < RUN_FAILS_WITHIN_S
        assert "produced" not in result.stdout and "{" not in result.stdout
        _assert_no_secret(
            {f"{command}'s output": result.stdout + result.stderr}, secured.password, wrong
        )
