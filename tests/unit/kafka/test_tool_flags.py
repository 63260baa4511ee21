"""Every flag of ``produce``, ``tail``, ``demo``, ``example-model`` and ``bench`` reaches
what it configures.

Each command's ``main`` runs on the parser the cli builds for it
(``processor.cli.command_parser``), given recorders for its heavy work through its
keyword parameters: the library function the command calls (``produce``, ``tail``,
``run_demo``, the example model's trainers and saver, the benchmark's sections and
results writer, TensorFlow's thread sizing) records its arguments instead of talking to
Kafka, training or measuring, and where a flag configures a Kafka client, the real
library function runs up to the client's construction, which a stand-in records and then
stops. One table row per flag: its arguments, how to observe what it
changed, and the expected observation, which must differ from the observation without
the flag (or the row proves nothing).

The flags are read from each command's ``--help``, so a new flag without a row fails here,
and a row whose flag is gone fails too.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiokafka
import numpy as np
import pytest

# Imported before a test replaces aiokafka's clients: it reads their signatures.
import processor.kafka.io.clients  # noqa: F401
from processor import cli
from processor.bench import command as bench
from processor.demo import command as demo
from processor.demo import example_command as example
from processor.demo.config import DemoConfig
from processor.demo.example import TrainConfig, TrainMetrics
from processor.demo.frames_example import FramesMetrics, FramesTrainConfig
from processor.demo.prepare import Trainers, prepare_model
from processor.demo.report import DemoSummary, ForecastErrors
from processor.kafka.tools import produce as produce_tool
from processor.kafka.tools import tail as tail_tool
from processor.kafka.tools.produce import ProduceStats

COMMANDS = ("produce", "tail", "demo", "example-model", "bench")

#: The model ``demo --init-model`` is given with (an init model needs a model).
DEMO_MODEL = "/models/base.keras"

#: Stands for the path of a TOML file with :data:`TOOL_CONFIG_TEXT` in a row's arguments
#: (written to the test's temporary directory when the row runs).
TOOL_CONFIG = "@tool-config.toml"
TOOL_CONFIG_TEXT = """\
[kafka]
client_id = "from-file"
[kafka.producer]
linger_ms = 21
[kafka.consumer]
fetch_max_wait_ms = 51
"""


class _Stop(Exception):
    """Raised by a stand-in Kafka client once it has recorded its arguments."""


@dataclass
class Seen:
    """What one command run configured.

    ``call``: the arguments (by parameter name) of the library function the command
    called; ``client``: the keyword arguments of the Kafka client the real library function
    created; ``threads``: ``configure_threads`` calls; ``loaded``: ``load_step_model``
    calls; ``saved``/``written``: where example-model saved its model and bench wrote its
    results."""

    call: dict[str, Any] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    threads: list[tuple[Any, ...]] = field(default_factory=list)
    loaded: list[tuple[Any, ...]] = field(default_factory=list)
    saved: str | None = None
    written: str | None = None
    config: Any = None


def help_flags(command: str) -> list[str]:
    """The long flags ``lstm-stream COMMAND --help`` lists (``--help`` itself aside): the
    first option string of every option line."""
    parser, _ = cli.command_parser(command)
    flags = re.findall(r"^  (?:-\w, )?(--[\w-]+)", parser.format_help(), flags=re.M)
    return [f for f in dict.fromkeys(flags) if f != "--help"]


def _bound(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


class _StandinModel:
    """What ``produce --model`` and the demo read of a loaded model."""

    input_shape = (7,)
    input_dtype = np.dtype("uint8")


# ---- runners: the command's main on its real parser, heavy work recorded ---------------------


#: The module of each Kafka tool; its library function has the command's name.
TOOLS = {"produce": produce_tool, "tail": tail_tool}


def _run_kafka_tool(
    command: str, client: str, result: Any, argv: list[str], mp: pytest.MonkeyPatch
) -> Seen:
    """``produce`` or ``tail`` (the command's ``main`` on its real parser): once with the
    tool's function recorded (``result`` is what the stand-in returns), once with the real
    function as far as its aiokafka ``client``'s construction (its keyword arguments are
    recorded). ``produce --model`` loads a stand-in model."""
    seen = Seen()
    tool = TOOLS[command]
    real = getattr(tool, command)

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        seen.call = _bound(real, args, kwargs)
        return result

    def load(path: str, init: Any = None) -> _StandinModel:
        seen.loaded.append((path, init))
        return _StandinModel()

    class Client:
        def __init__(self, **kwargs: Any) -> None:
            seen.client = kwargs

        async def start(self) -> None:
            raise _Stop

    for name in list(os.environ):
        if name.startswith("LSTM_STREAM_"):
            mp.delenv(name)  # the tools read LSTM_STREAM_KAFKA_* and LSTM_STREAM_CONFIG
    parser, _ = cli.command_parser(command)
    models = {"load_model": load} if command == "produce" else {}
    assert tool.main(parser.parse_args(argv), run=recorded, **models) == 0
    with mp.context() as m:
        m.setattr(aiokafka, client, Client)
        with pytest.raises(_Stop):
            tool.main(parser.parse_args(argv), **models)
    return seen


def _run_produce(argv: list[str], mp: pytest.MonkeyPatch) -> Seen:
    return _run_kafka_tool("produce", "AIOKafkaProducer", ProduceStats(0, 1.0), argv, mp)


def _run_tail(argv: list[str], mp: pytest.MonkeyPatch) -> Seen:
    return _run_kafka_tool("tail", "AIOKafkaConsumer", 0, argv, mp)


def _run_demo(argv: list[str], mp: pytest.MonkeyPatch) -> Seen:
    """``demo`` (its ``main`` on its real parser) with the run, the thread sizing and the
    JSON writer recorded; with ``--model``, the recorded config's model is then prepared
    as the demo would, with a recording loader."""
    seen = Seen()

    def run(config: DemoConfig, *args: Any, **kwargs: Any) -> DemoSummary:
        seen.config = config
        return _empty_summary()

    def load(path: str, init: Any = None) -> _StandinModel:
        seen.loaded.append((path, init))
        return _StandinModel()

    def write_json(summary: DemoSummary, path: str) -> None:
        seen.written = path

    parser, _ = cli.command_parser("demo")
    code = demo.main(
        parser.parse_args(argv),
        run=run,
        configure=lambda *a: seen.threads.append(a),
        write_json=write_json,
    )
    assert code == 0
    if seen.config.engine.model is not None:  # without one the demo would train a model
        prepare_model(seen.config, load_model=load)
    return seen


def _empty_summary() -> DemoSummary:
    """The summary of a demo run that did nothing (what the recorded run returns)."""
    nothing = ForecastErrors(streams=0, pairs=0, stateful=None, reset=None, naive=None)
    zeros = {f.name: 0 for f in dataclasses.fields(DemoSummary) if f.type in ("int", "float")}
    return DemoSummary(
        **zeros,
        model="stand-in",
        stopped_early=False,
        all_streams=nothing,
        sample=nothing,
        offline_max_abs_diff=None,
    )


def _run_example(argv: list[str], mp: pytest.MonkeyPatch) -> Seen:
    """``example-model`` (its ``main`` on its real parser) with training and saving
    recorded."""
    seen = Seen()
    trained = object()

    def train(config: TrainConfig) -> tuple[Any, TrainMetrics]:
        seen.config = config
        return trained, TrainMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)

    trained_init = object()

    def train_frames(config: FramesTrainConfig) -> tuple[Any, Any, FramesMetrics]:
        seen.config = config
        init = trained_init if config.init_model else None
        return trained, init, FramesMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0)

    def save(model: Any, out: str) -> Path:
        assert model is trained or model is trained_init
        seen.saved = str(out)
        return Path(out)

    parser, _ = cli.command_parser("example-model")
    trainers = Trainers(sensor=train, frames=train_frames)
    assert example.main(parser.parse_args(argv), trainers=trainers, save=save) == 0
    return seen


def _run_bench(argv: list[str], mp: pytest.MonkeyPatch) -> Seen:
    """``bench`` (its ``main`` on its real parser) with the thread sizing, the sections'
    run and the results' writer recorded."""
    seen = Seen()

    def run(cfg: Any, **kwargs: Any) -> dict[str, Any]:
        seen.config = cfg
        seen.call = kwargs
        return {"goals": [], "errors": [], "agreement": {}}

    def write(results: dict[str, Any], out: Path) -> None:
        results["plots"] = []
        seen.written = str(out)

    parser, _ = cli.command_parser("bench")
    code = bench.main(
        parser.parse_args(argv),
        configure=lambda *a: seen.threads.append(a),
        run=run,
        write=write,
    )
    assert code == 0
    return seen


RUNNERS: dict[str, Callable[[list[str], pytest.MonkeyPatch], Seen]] = {
    "produce": _run_produce,
    "tail": _run_tail,
    "demo": _run_demo,
    "example-model": _run_example,
    "bench": _run_bench,
}

#: Required flags of each command, given in every run unless the row is theirs.
BASE: dict[str, dict[str, tuple[str, ...]]] = {
    "produce": {"--topic": ("--topic", "in")},
    "tail": {"--topic": ("--topic", "out")},
    "demo": {},
    "example-model": {"--out": ("--out", "/tmp/base.keras")},
    "bench": {},
}


# ---- the rows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    args: tuple[str, ...]
    observe: Callable[[Seen], Any]
    expected: Any


def _call(name: str) -> Callable[[Seen], Any]:
    return lambda s: s.call[name]


def _config(name: str) -> Callable[[Seen], Any]:
    return lambda s: getattr(s.config, name)


def _engine(name: str) -> Callable[[Seen], Any]:
    return lambda s: getattr(s.config.engine, name)


ROWS: dict[str, dict[str, Row]] = {
    "produce": {
        "--bootstrap-servers": Row(
            ("--bootstrap-servers", "b:1"),
            lambda s: (s.call["bootstrap_servers"], s.client["bootstrap_servers"]),
            ("b:1", "b:1"),
        ),
        "--topic": Row(("--topic", "sensors"), _call("topic"), "sensors"),
        "--streams": Row(("--streams", "7"), _call("streams"), 7),
        "--kind": Row(
            ("--kind", "frames"),
            lambda s: (s.call["kind"], s.call["shape"]),
            ("frames", (84, 84, 1)),
        ),
        "--shape": Row(("--shape", "2,3"), _call("shape"), (2, 3)),
        "--model": Row(
            ("--model", "/models/m.keras"),
            lambda s: (s.loaded[:1], s.call["shape"], s.call["kind"]),
            ([("/models/m.keras", None)], (7,), "frames"),
        ),
        "--encoding": Row(("--kind", "frames", "--encoding", "jpeg"), _call("encoding"), "jpeg"),
        "--quality": Row(("--quality", "75"), _call("quality"), 75),
        "--rate": Row(("--rate", "50"), _call("rate"), 50.0),
        "--duration": Row(("--duration", "3"), _call("duration"), 3.0),
        "--count": Row(
            ("--count", "9"), lambda s: (s.call["count"], s.call["duration"]), (9, None)
        ),
        "--start-seq": Row(("--start-seq", "5"), _call("start_seq"), 5),
        "--stream-prefix": Row(("--stream-prefix", "dev-"), _call("stream_prefix"), "dev-"),
        "--seed": Row(("--seed", "4"), _call("seed"), 4),
        "--no-ts": Row(("--no-ts",), _call("with_ts"), False),
        "--partitions": Row(("--partitions", "3"), _call("partitions"), 3),
        "--kafka-option": Row(
            ("--kafka-option", "linger_ms=20", "--kafka-option", "client_id=gen"),
            lambda s: (s.client["linger_ms"], s.client.get("client_id")),
            (20, "gen"),
        ),
        "--config": Row(
            ("--config", TOOL_CONFIG),
            lambda s: (s.client["linger_ms"], s.client.get("client_id")),
            (21, "from-file"),
        ),
    },
    "tail": {
        "--bootstrap-servers": Row(
            ("--bootstrap-servers", "b:1"),
            lambda s: (s.call["bootstrap_servers"], s.client["bootstrap_servers"]),
            ("b:1", "b:1"),
        ),
        "--topic": Row(("--topic", "results"), _call("topic"), "results"),
        "--kind": Row(("--kind", "dlq"), _call("kind"), "dlq"),
        "--max-records": Row(("--max-records", "3"), _call("max_records"), 3),
        "--from-beginning": Row(
            ("--from-beginning",),
            lambda s: (s.call["from_beginning"], s.client["auto_offset_reset"]),
            (True, "earliest"),
        ),
        "--idle-timeout": Row(("--idle-timeout", "1.5"), _call("idle_timeout"), 1.5),
        "--kafka-option": Row(
            ("--kafka-option", "fetch_max_wait_ms=50"),
            lambda s: s.client.get("fetch_max_wait_ms"),
            50,
        ),
        "--config": Row(
            ("--config", TOOL_CONFIG),
            lambda s: (s.client.get("fetch_max_wait_ms"), s.client.get("client_id")),
            (51, "from-file"),
        ),
    },
    "demo": {
        "--model": Row(
            ("--model", "/models/m.keras"),
            lambda s: (s.config.engine.model, s.loaded),
            ("/models/m.keras", [("/models/m.keras", None)]),
        ),
        "--init-model": Row(
            ("--model", DEMO_MODEL, "--init-model", "/models/i.keras"),
            lambda s: (s.config.engine.init_model, s.loaded),
            ("/models/i.keras", [(DEMO_MODEL, "/models/i.keras")]),
        ),
        "--device": Row(("--device", "cpu"), _engine("device"), "cpu"),
        "--state-dtype": Row(("--state-dtype", "float16"), _engine("state_dtype"), "float16"),
        "--cache-capacity": Row(("--cache-capacity", "3000"), _engine("cache_capacity"), 3000),
        "--spill-capacity": Row(("--spill-capacity", "77"), _engine("spill_capacity"), 77),
        "--idle-timeout": Row(("--idle-timeout", "2.5"), _engine("idle_timeout"), 2.5),
        "--state-dir": Row(("--state-dir", "/tmp/states"), _engine("state_dir"), "/tmp/states"),
        "--max-batch": Row(("--max-batch", "64"), _engine("max_batch"), 64),
        "--scan-min-steps": Row(("--scan-min-steps", "8"), _engine("scan_min_steps"), 8),
        "--max-scan-steps": Row(("--max-scan-steps", "16"), _engine("max_scan_steps"), 16),
        "--xla": Row(("--xla",), _engine("xla"), True),
        # Sized by main() before TensorFlow runs; the engine itself is then built with 0.
        "--threads": Row(("--threads", "3"), lambda s: s.threads, [(3, 1)]),
        "--streams": Row(
            ("--streams", "100"),
            lambda s: (s.config.streams, s.config.engine.cache_capacity),
            (100, 1024),  # the automatic cache size follows (at least --max-batch)
        ),
        "--duration": Row(("--duration", "2"), _config("duration"), 2.0),
        "--rate": Row(("--rate", "500"), _config("rate"), 500.0),
        "--seed": Row(("--seed", "3"), _config("seed"), 3),
        "--sample-streams": Row(("--sample-streams", "5"), _config("sample_streams"), 5),
        "--redeliver": Row(("--redeliver", "0.1"), _config("redeliver"), 0.1),
        "--no-progress": Row(("--no-progress",), _config("progress"), False),
        # The kind picks the feeds and its own defaults (fewer, heavier streams for cameras).
        "--kind": Row(
            ("--kind", "frames"),
            lambda s: (s.config.kind, s.config.streams, s.config.sample_streams),
            ("frames", 2000, 32),
        ),
        "--summary-json": Row(
            ("--summary-json", "/tmp/summary.json"), lambda s: s.written, "/tmp/summary.json"
        ),
    },
    "example-model": {
        "--out": Row(("--out", "/tmp/other.keras"), lambda s: s.saved, "/tmp/other.keras"),
        "--seed": Row(("--seed", "3"), _config("seed"), 3),
        "--epochs": Row(("--epochs", "2"), _config("epochs"), 2),
        "--streams": Row(("--streams", "16"), _config("streams"), 16),
        "--steps": Row(("--steps", "10"), _config("steps"), 10),
        "--channels": Row(("--channels", "2"), _config("channels"), 2),
        "--units": Row(("--units", "8"), _config("units"), 8),
        "--layers": Row(("--layers", "2"), _config("layers"), 2),
        "--batch-size": Row(("--batch-size", "8"), _config("batch_size"), 8),
        "--learning-rate": Row(("--learning-rate", "0.5"), _config("learning_rate"), 0.5),
        "--kind": Row(("--kind", "frames"), lambda s: type(s.config).__name__, "FramesTrainConfig"),
        "--init-out": Row(
            ("--kind", "frames", "--init-out", "/tmp/init.keras"),
            lambda s: (getattr(s.config, "init_model", None), s.saved),
            (True, "/tmp/init.keras"),
        ),
    },
    "bench": {
        "--quick": Row(
            ("--quick",),
            lambda s: (s.config.quick, s.config.models),
            (True, ("lstm2x256",)),
        ),
        "--out": Row(("--out", "/tmp/bench-x"), lambda s: s.written, "/tmp/bench-x"),
        "--models": Row(("--models", "tiny"), _config("models"), ("tiny",)),
        "--threads": Row(
            ("--threads", "3"),
            lambda s: (s.threads, s.call["threads"]),
            ([(3, 1)], (3, 1)),
        ),
        "--inter-threads": Row(
            ("--inter-threads", "2"),
            lambda s: (s.threads, s.call["threads"]),
            ([(2, 2)], (2, 2)),
        ),
        "--min-time": Row(("--min-time", "0.25"), lambda s: s.config.budget.min_time, 0.25),
        "--bootstrap-servers": Row(
            ("--bootstrap-servers", "b:1"), _config("bootstrap_servers"), "b:1"
        ),
        "--seed": Row(("--seed", "3"), _config("seed"), 3),
    },
}

CASES = [(command, flag) for command in COMMANDS for flag in help_flags(command)]
IDS = [f"{command}{flag}" for command, flag in CASES]


def _argv(command: str, flag: str, row: Row | None, tmp_path: Path) -> list[str]:
    base = [a for f, args in BASE[command].items() if f != flag for a in args]
    argv = base + list(row.args if row is not None else ())
    if TOOL_CONFIG in argv:
        path = tmp_path / "tool-config.toml"
        path.write_text(TOOL_CONFIG_TEXT)
        argv = [str(path) if a == TOOL_CONFIG else a for a in argv]
    return argv


@pytest.mark.parametrize(("command", "flag"), CASES, ids=IDS)
def test_every_flag_reaches_what_it_configures(
    command: str, flag: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    row = ROWS[command].get(flag)
    if row is None:
        pytest.fail(f"{command} {flag} is in --help but has no row in ROWS: add one")
    seen = RUNNERS[command](_argv(command, flag, row, tmp_path), monkeypatch)
    assert row.observe(seen) == row.expected


@pytest.mark.parametrize(("command", "flag"), CASES, ids=IDS)
def test_without_the_flag_the_observation_differs(
    command: str, flag: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    row = ROWS[command].get(flag)
    if row is None:
        pytest.fail(f"{command} {flag} is in --help but has no row in ROWS: add one")
    argv = _argv(command, flag, None, tmp_path)
    if flag in BASE[command]:
        # A required flag: without it the command is refused before doing anything.
        with pytest.raises(SystemExit) as refused:
            RUNNERS[command](argv, monkeypatch)
        assert refused.value.code == 2
        return
    seen = RUNNERS[command](argv, monkeypatch)
    assert row.observe(seen) != row.expected


@pytest.mark.parametrize("command", COMMANDS)
def test_every_row_is_a_flag_in_help(command: str) -> None:
    assert set(ROWS[command]) - set(help_flags(command)) == set()


#: Flags the recorded command line is known to leave out.
BENCH_NOT_RECORDED: dict[str, str] = {}
BENCH_FLAGS = [
    pytest.param(
        flag,
        marks=pytest.mark.xfail(strict=True, reason=BENCH_NOT_RECORDED[flag])
        if flag in BENCH_NOT_RECORDED
        else (),
    )
    for c, flag in CASES
    if c == "bench"
]


@pytest.mark.parametrize("flag", BENCH_FLAGS)
def test_bench_records_a_command_that_reproduces_each_flag(
    flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line stored in the results re-parses to the same options: a result can
    be reproduced from what it says ran."""
    row = ROWS["bench"][flag]
    seen = _run_bench(list(row.args), monkeypatch)
    parser, _ = cli.command_parser("bench")
    recorded = shlex.split(seen.call["command"])
    assert recorded[:2] == ["lstm-stream", "bench"]
    given: argparse.Namespace = parser.parse_args(list(row.args))
    assert vars(parser.parse_args(recorded[2:])) == vars(given)
