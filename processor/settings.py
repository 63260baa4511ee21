"""Settings of the Kafka processor (``lstm-stream run``): one frozen object built once.

Sources, highest precedence first:

1. command-line flags;
2. environment variables ``LSTM_STREAM_<FLAG>`` (the long flag in upper case, dashes as
   underscores: ``--max-delay-ms`` -> ``LSTM_STREAM_MAX_DELAY_MS``; lists comma-separated);
3. a TOML file (``--config`` or ``LSTM_STREAM_CONFIG``): top-level keys are the long flag
   names (dashes or underscores), a ``[kafka]`` table holds Kafka client options
   (sub-tables ``[kafka.consumer]`` / ``[kafka.producer]`` for one client only);
4. the defaults (shown by ``--help``).

Kafka client options are passed through to aiokafka rather than re-modelled: repeated
``--kafka-option KEY=VALUE``, ``LSTM_STREAM_KAFKA_<KEY>`` (``__`` in the key stands for a
dot: ``LSTM_STREAM_KAFKA_CONSUMER__FETCH_MAX_BYTES``) or the ``[kafka]`` table; they are
merged key by key with the same precedence. See :mod:`processor.kafka.clients` for how they
reach the clients.

Secrets never reach a log: any Kafka option whose name contains ``password``, ``secret``,
``token`` or ``key`` is shown as ``'***'`` by ``repr(settings)`` and :meth:`Settings.redacted`.

This module does no Kafka or TensorFlow work, so building settings (and ``--help``) is cheap.
"""

from __future__ import annotations

import argparse
import logging
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from processor.errors import ConfigError
from processor.kafka.clients import parse_bool, split_kafka_option
from processor.options import EngineOptions, add_engine_arguments

__all__ = [
    "ENV_PREFIX",
    "KAFKA_ENV_PREFIX",
    "Settings",
    "add_settings_arguments",
    "is_secret_option",
    "settings_from_args",
]

ENV_PREFIX: Final = "LSTM_STREAM_"
KAFKA_ENV_PREFIX: Final = "LSTM_STREAM_KAFKA_"
CONFIG_ENV: Final = "LSTM_STREAM_CONFIG"
REDACTED: Final = "***"
_SECRET_WORDS: Final = ("password", "secret", "token", "key")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

_E = EngineOptions  # engine defaults live in one place (processor.options)


def is_secret_option(name: str) -> bool:
    """True when a Kafka option's value must never be logged (SASL passwords, SSL keys,
    OAuth tokens...). Deliberately broad: a false positive only hides a harmless value."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything ``lstm-stream run`` needs, validated. Build with :func:`settings_from_args`
    (or directly in tests: the constructor validates too). ``repr`` redacts secrets."""

    # Kafka
    bootstrap_servers: str = "localhost:9092"
    input_topics: tuple[str, ...] = ()
    output_topic: str = ""
    dlq_topic: str = ""  # "" -> f"{output_topic}-dlq"
    group_id: str = "lstm-stream"
    kafka_options: tuple[tuple[str, Any], ...] = ()
    # model and engine (defaults shared with replay/demo through processor.options)
    model: str | None = None
    init_model: str | None = _E.init_model
    device: str = _E.device
    state_dtype: str = _E.state_dtype
    cache_capacity: int = _E.cache_capacity
    spill_capacity: int = _E.spill_capacity
    idle_timeout: float | None = _E.idle_timeout
    max_batch: int = _E.max_batch
    scan_min_steps: int = _E.scan_min_steps
    max_scan_steps: int = _E.max_scan_steps
    xla: bool = _E.xla
    threads: int = _E.threads
    # runtime
    max_delay_ms: float = 5.0
    queue_max_records: int = 16_384
    queue_low_records: int = -1  # -1 -> half of queue_max_records
    commit_interval_ms: int = 1000
    drain_timeout: float = 30.0
    max_record_bytes: int = 4 * 1024 * 1024
    dlq_max_value_bytes: int = 65_536
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    config_file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Resolve derived defaults (frozen: through object.__setattr__), then validate.
        if not self.dlq_topic and self.output_topic:
            object.__setattr__(self, "dlq_topic", f"{self.output_topic}-dlq")
        if self.queue_low_records == -1:
            object.__setattr__(self, "queue_low_records", self.queue_max_records // 2)
        object.__setattr__(self, "input_topics", tuple(self.input_topics))
        object.__setattr__(self, "kafka_options", tuple((str(k), v) for k, v in self.kafka_options))
        self._validate()

    def _validate(self) -> None:
        problems: list[str] = []
        if not self.bootstrap_servers:
            problems.append("--bootstrap-servers is empty")
        if not self.input_topics:
            problems.append("at least one --input-topic is required")
        if not self.output_topic:
            problems.append("--output-topic is required")
        if not self.model:
            problems.append("--model is required")
        if len(set(self.input_topics)) != len(self.input_topics):
            problems.append(f"--input-topic repeats a topic: {list(self.input_topics)}")
        for name in (self.output_topic, self.dlq_topic):
            if name and name in self.input_topics:
                problems.append(f"topic {name!r} is both an input and an output")
        if self.output_topic and self.dlq_topic == self.output_topic:
            problems.append("--dlq-topic must differ from --output-topic")
        if not self.group_id:
            problems.append("--group-id is empty")
        positive = {
            "--cache-capacity": self.cache_capacity,
            "--max-batch": self.max_batch,
            "--max-scan-steps": self.max_scan_steps,
            "--queue-max-records": self.queue_max_records,
            "--commit-interval-ms": self.commit_interval_ms,
            "--max-record-bytes": self.max_record_bytes,
        }
        problems += [f"{flag} must be >= 1, got {v}" for flag, v in positive.items() if v < 1]
        non_negative = {
            "--spill-capacity": self.spill_capacity,
            "--scan-min-steps": self.scan_min_steps,
            "--threads": self.threads,
            "--dlq-max-value-bytes": self.dlq_max_value_bytes,
            "--max-delay-ms": self.max_delay_ms,
        }
        problems += [f"{flag} must be >= 0, got {v}" for flag, v in non_negative.items() if v < 0]
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            problems.append(f"--idle-timeout must be > 0 seconds, got {self.idle_timeout}")
        if self.drain_timeout <= 0:
            problems.append(f"--drain-timeout must be > 0 seconds, got {self.drain_timeout}")
        if self.max_batch > self.cache_capacity:
            problems.append(
                f"--max-batch {self.max_batch} exceeds --cache-capacity {self.cache_capacity}"
            )
        if not 0 <= self.queue_low_records < self.queue_max_records:
            problems.append(
                f"--queue-low-records {self.queue_low_records} must be below "
                f"--queue-max-records {self.queue_max_records}"
            )
        if self.queue_max_records < self.max_batch:
            problems.append(
                f"--queue-max-records {self.queue_max_records} must be >= --max-batch "
                f"{self.max_batch} (a full batch must fit in the queue)"
            )
        if not 0 <= self.metrics_port < 65536:
            problems.append(f"--metrics-port must be 0..65535, got {self.metrics_port}")
        if self.log_level not in LOG_LEVELS:
            problems.append(f"--log-level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    # ---- views ---------------------------------------------------------------------------

    @property
    def kafka(self) -> dict[str, Any]:
        """The pass-through Kafka client options (unredacted: for the clients only)."""
        return dict(self.kafka_options)

    def engine_options(self) -> EngineOptions:
        """The engine part, for :func:`processor.options.build_engine`."""
        names = {f.name for f in fields(EngineOptions)}
        return EngineOptions(**{n: getattr(self, n) for n in names})

    def redacted(self) -> dict[str, Any]:
        """All settings as a dict that is safe to log (secret Kafka options masked)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "kafka_options":
                value = {k: (REDACTED if is_secret_option(k) else v) for k, v in value}
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({body})"


# ---- option table -----------------------------------------------------------------------


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none", "never") else float(text)


def _optional_str(text: str) -> str | None:
    return None if text.strip().lower() in ("", "none") else text


@dataclass(frozen=True)
class _Option:
    """One setting: its flag, how a string (env/flag) becomes a value, and its help."""

    dest: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    kind: str = "value"  # "value" | "list" (repeatable flag) | "bool" (store_true flag)
    metavar: str | None = None
    choices: Sequence[str] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()


_D = Settings.__dataclass_fields__

# The processor's own options (the engine options come from processor.options).
_RUNTIME_OPTIONS: tuple[_Option, ...] = (
    _Option(
        "bootstrap_servers", "--bootstrap-servers", str, "Kafka bootstrap servers, host:port[,...]"
    ),
    _Option(
        "input_topics",
        "--input-topic",
        str,
        "input topic (repeat the flag for several; env/TOML: a comma-separated string or a "
        "list); the message key is the stream id",
        kind="list",
        metavar="TOPIC",
    ),
    _Option("output_topic", "--output-topic", str, "topic for the outputs (key = stream id)"),
    _Option(
        "dlq_topic",
        "--dlq-topic",
        str,
        "dead-letter topic for bad records (original key and value, the value bounded by "
        "--dlq-max-value-bytes; reason, detail and source topic/partition/offset in headers)",
    ),
    _Option("group_id", "--group-id", str, "Kafka consumer group id"),
    _Option(
        "max_delay_ms",
        "--max-delay-ms",
        float,
        "longest a record waits for its batch to fill before the batch runs anyway",
    ),
    _Option(
        "queue_max_records",
        "--queue-max-records",
        int,
        "backpressure high-water mark: records fetched but not yet acknowledged (queued, "
        "computing or being produced); at it every assigned partition is paused",
    ),
    _Option(
        "queue_low_records",
        "--queue-low-records",
        int,
        "backpressure low-water mark: paused partitions resume at or below it; -1 = half of "
        "--queue-max-records",
    ),
    _Option(
        "commit_interval_ms",
        "--commit-interval-ms",
        int,
        "how often acknowledged offsets are committed (offsets are only ever committed after "
        "the outputs and dead letters of the records before them are acknowledged)",
    ),
    _Option(
        "drain_timeout",
        "--drain-timeout",
        float,
        "seconds to finish in-flight work on shutdown or partition revocation before giving up",
    ),
    _Option(
        "max_record_bytes",
        "--max-record-bytes",
        int,
        "largest accepted input record; larger ones go to the dead-letter topic as 'oversize' "
        "(without their value)",
    ),
    _Option(
        "dlq_max_value_bytes",
        "--dlq-max-value-bytes",
        int,
        "largest original value a dead letter carries; a longer one is cut to this many bytes "
        "(header lstm-stream.value-truncated = its original size), and a dead letter the "
        "producer or broker refuses as too large is re-sent without its value; 0 = never "
        "carry the value",
    ),
    _Option(
        "metrics_port",
        "--metrics-port",
        int,
        "port of the HTTP server with /metrics (Prometheus), /healthz and /readyz; 0 = off",
    ),
    _Option("metrics_host", "--metrics-host", str, "address the metrics server binds"),
    _Option(
        "log_level",
        "--log-level",
        str,
        "logging level of the processor",
        choices=LOG_LEVELS,
    ),
)

# How env/TOML strings become values for the engine options, by destination.
_ENGINE_PARSERS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "init_model": _optional_str,
    "device": str,
    "state_dtype": str,
    "cache_capacity": int,
    "spill_capacity": int,
    "idle_timeout": _optional_float,
    "max_batch": int,
    "scan_min_steps": int,
    "max_scan_steps": int,
    "xla": parse_bool,
    "threads": int,
}


def _engine_options() -> tuple[_Option, ...]:
    """The engine flags exactly as processor.options defines them (flag, help, choices)."""
    scratch = argparse.ArgumentParser(add_help=False)
    add_engine_arguments(scratch, model_required=False)
    out = []
    for action in scratch._actions:  # argparse has no public accessor for its actions
        if action.dest not in _ENGINE_PARSERS:
            continue
        long_flag = max(action.option_strings, key=len)
        is_bool = isinstance(action, argparse._StoreTrueAction)
        out.append(
            _Option(
                action.dest,
                long_flag,
                _ENGINE_PARSERS[action.dest],
                action.help or "",
                kind="bool" if is_bool else "value",
                choices=tuple(action.choices) if action.choices else None,
            )
        )
    missing = set(_ENGINE_PARSERS) - {o.dest for o in out}
    if missing:  # processor.options renamed something: fail loudly, not silently
        raise RuntimeError(f"engine flags not found in processor.options: {sorted(missing)}")
    return tuple(out)


def _all_options() -> tuple[_Option, ...]:
    return _RUNTIME_OPTIONS + _engine_options()


def _default_text(dest: str) -> str:
    default = _D[dest].default
    if dest == "dlq_topic":
        return "<output topic>-dlq"
    if dest == "queue_low_records":
        return "-1 (half of --queue-max-records)"
    if default is None or default == "" or default == ():
        return "none" if dest != "model" else "required"
    if isinstance(default, bool):
        return "off" if not default else "on"
    return str(default)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``run`` option to ``parser``.

    Flags default to ``argparse.SUPPRESS`` so that :func:`settings_from_args` can tell a
    flag that was given from one that was not (flags > env > file > defaults); the help
    text of each states the real default instead.
    """
    kafka = parser.add_argument_group("Kafka")
    runtime = parser.add_argument_group("runtime, backpressure and metrics")
    engine = parser.add_argument_group("model and engine")
    kafka_dests = {"bootstrap_servers", "input_topics", "output_topic", "dlq_topic", "group_id"}
    for opt in _all_options():
        group = kafka if opt.dest in kafka_dests else engine
        if opt.dest in _D and opt.dest not in _ENGINE_PARSERS and opt.dest not in kafka_dests:
            group = runtime
        help_text = f"{opt.help} [env {opt.env}] (default: {_default_text(opt.dest)})"
        help_text = help_text.replace("%", "%%")
        if opt.kind == "bool":
            group.add_argument(
                opt.flag,
                dest=opt.dest,
                action="store_true",
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif opt.kind == "list":
            group.add_argument(
                opt.flag,
                dest=opt.dest,
                action="append",
                default=argparse.SUPPRESS,
                metavar=opt.metavar,
                help=help_text,
            )
        else:
            group.add_argument(
                opt.flag,
                dest=opt.dest,
                type=opt.parse,
                default=argparse.SUPPRESS,
                choices=opt.choices,
                metavar=opt.metavar,
                help=help_text,
            )
    kafka.add_argument(
        "--kafka-option",
        dest="kafka_option",
        action="append",
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="pass an option to the aiokafka clients (repeatable), e.g. "
        "security_protocol=SASL_SSL, sasl_mechanism=PLAIN, sasl_plain_username=U, "
        "sasl_plain_password=P, ssl_cafile=PATH; "
        "prefix with 'consumer.' or 'producer.' for one client only. Secret values are never "
        f"logged [env {KAFKA_ENV_PREFIX}<KEY>, '__' for '.'; TOML [kafka] table] (default: none)",
    )
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"TOML file with settings (flag names as keys, a [kafka] table) [env {CONFIG_ENV}] "
        "(default: none)",
    )


# ---- sources ----------------------------------------------------------------------------


def _coerce(opt: _Option, value: Any, source: str) -> Any:
    """A value from env (str) or TOML (typed) -> the setting's type; ConfigError if not."""
    try:
        if opt.kind == "list":
            if isinstance(value, str):
                return _parse_list(value)
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError(f"expected a list of strings, got {value!r}")
        if opt.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return parse_bool(value)
            raise ValueError(f"expected a boolean, got {value!r}")
        if isinstance(value, str):
            parsed = opt.parse(value)
        elif isinstance(value, bool):  # bool is an int in Python: refuse it for numbers
            raise ValueError(f"expected {opt.parse.__name__}, got a boolean")
        elif isinstance(value, int | float) and opt.parse in (int, float, _optional_float):
            if opt.parse is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected an integer, got {value!r}")
            parsed = int(value) if opt.parse is int else float(value)
        else:
            raise ValueError(f"unexpected value {value!r}")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if opt.choices is not None and parsed not in opt.choices:
        raise ConfigError(f"{source}: {parsed!r} is not one of {list(opt.choices)}")
    return parsed


def _flatten_kafka_table(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if prefix or key not in ("consumer", "producer"):
                raise ConfigError(
                    f"[kafka] table: only [kafka.consumer] and [kafka.producer] sub-tables are "
                    f"allowed, got [kafka.{name}]"
                )
            out.update(_flatten_kafka_table(value, prefix=f"{key}."))
        else:
            out[name] = value
    return out


def _load_toml(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings by TOML key, kafka options) from a TOML file."""
    try:
        with Path(path).open("rb") as fp:
            data = tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    kafka = data.pop("kafka", {})
    if not isinstance(kafka, dict):
        raise ConfigError(f"config file {path!r}: 'kafka' must be a table")
    return data, _flatten_kafka_table(kafka)


def settings_from_args(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from parsed flags (see :func:`add_settings_arguments`), the
    environment and the optional TOML file; precedence flags > env > file > defaults.

    Raises :class:`ConfigError` naming the source of every invalid value. Unknown
    ``LSTM_STREAM_*`` variables are ignored (other tools use the prefix); unknown TOML keys
    are errors (a typo must not silently fall back to a default).
    """
    env = dict(os.environ if environ is None else environ)
    given = vars(args) if args is not None else {}
    options = _all_options()
    by_key: dict[str, _Option] = {}
    for opt in options:
        by_key[opt.flag.lstrip("-").replace("-", "_")] = opt
        by_key[opt.dest] = opt

    values: dict[str, Any] = {}
    kafka: dict[str, Any] = {}

    config_file = given.get("config") or env.get(CONFIG_ENV) or None
    if config_file:
        table, file_kafka = _load_toml(config_file)
        for key, value in table.items():
            found = by_key.get(key.replace("-", "_"))
            if found is None:
                raise ConfigError(f"config file {config_file!r}: unknown key {key!r}")
            values[found.dest] = _coerce(found, value, f"config file key {key!r}")
        kafka.update(file_kafka)

    for opt in options:
        if opt.env in env:
            values[opt.dest] = _coerce(opt, env[opt.env], f"environment variable {opt.env}")
    for name, value in env.items():
        if name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(KAFKA_ENV_PREFIX):
            key = name[len(KAFKA_ENV_PREFIX) :].lower().replace("__", ".")
            kafka[key] = value

    for opt in options:
        if opt.dest in given:
            value = given[opt.dest]
            values[opt.dest] = tuple(value) if opt.kind == "list" else value
    for text in given.get("kafka_option") or ():
        key, value = split_kafka_option(text)
        kafka[key] = value

    values["kafka_options"] = tuple(sorted(kafka.items()))
    values["config_file"] = config_file
    return Settings(**values)


def configure_logging(level: str) -> None:
    """Apply ``--log-level`` of ``run`` to the root logger (installing a handler if the CLI
    did not). The default level leaves the root level alone, so the top-level
    ``lstm-stream --log-level X run ...`` keeps working."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        root.setLevel(level)
    elif level != _D["log_level"].default:
        root.setLevel(level)
