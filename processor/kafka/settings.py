"""Settings of the Kafka processor (``lstm-stream run``): one frozen object built once.

Sources, highest precedence first:

1. command-line flags;
2. environment variables ``LSTM_STREAM_<FLAG>`` (the long flag in upper case, dashes as
   underscores: ``--max-delay-ms`` -> ``LSTM_STREAM_MAX_DELAY_MS``; lists comma-separated);
3. a TOML file (``--config`` or ``LSTM_STREAM_CONFIG``): top-level keys are the long flag
   names (dashes or underscores), a ``[kafka]`` table holds Kafka client options
   (sub-tables ``[kafka.consumer]`` / ``[kafka.producer]`` for one client only);
4. the defaults (shown by ``--help``).

Each option is declared once, as a field of :class:`Settings` (the processor's own) or of
:class:`processor.config.engine_options.EngineOptions` (the engine's, shared with ``replay``,
``demo`` and ``bench``); flags, variables and TOML keys are derived from the declarations (see
:mod:`processor.config.declare`). The engine options keep flat names in every source
(``--max-batch``, ``LSTM_STREAM_MAX_BATCH``, ``max-batch = 64``) and land in
``Settings.engine``.

Kafka client options are passed through to aiokafka rather than re-modelled: repeated
``--kafka-option KEY=VALUE``, ``LSTM_STREAM_KAFKA_<KEY>`` (``__`` in the key stands for a
dot: ``LSTM_STREAM_KAFKA_CONSUMER__FETCH_MAX_BYTES``) or the ``[kafka]`` table; they are
merged key by key with the same precedence and checked where they are used, by
:func:`processor.kafka.io.clients.client_kwargs`.

Secrets never reach a log: any Kafka option whose name contains ``password``, ``secret``,
``token`` or ``key`` is shown as ``'***'`` by ``repr(settings)`` and :meth:`Settings.redacted`.

Validation lives with the values: :class:`EngineOptions` checks the engine's,
:class:`Settings` only the processor's own (and the rules tying them to the engine's).
This module does no Kafka or TensorFlow work.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from processor.config import declare as config
from processor.config.declare import above, at_least, at_least_or, option, options_of
from processor.config.engine_options import ENGINE_GROUP, EngineOptions
from processor.config.flags import add_arguments
from processor.config.secrets import REDACTED, is_secret_option
from processor.config.sources import CONFIG_ENV, load_toml, resolve
from processor.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "Settings",
    "add_settings_arguments",
    "configure_logging",
    "is_secret_option",
    "run_options",
    "settings_from_args",
]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

_KAFKA = "Kafka"
_RUNTIME = "runtime, backpressure and metrics"
_TOPICS = "topic management"
_STATE = "durable state"

#: ``--state-topic`` value that turns durable state off.
NO_STATE_TOPIC: Final = "none"
#: Values of ``--processing-guarantee``.
GUARANTEES: Final = ("at-least-once", "exactly-once")
#: The ``--processing-guarantee`` value that runs one transaction per input partition.
EXACTLY_ONCE: Final = "exactly-once"
#: Values of ``--on-state-mismatch``.
STATE_MISMATCH_ACTIONS: Final = ("refuse", "reset")


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything ``lstm-stream run`` needs, validated. Build with :func:`settings_from_args`
    (or directly in tests: the constructor validates too and resolves ``dlq_topic`` and
    ``queue_low_records``). ``repr`` redacts secrets.

    Raises :class:`ConfigError` listing every invalid value of the processor's own options
    (the engine's were checked when ``engine`` was built).
    """

    # Kafka
    bootstrap_servers: str = option(
        "localhost:9092", "Kafka bootstrap servers, host:port[,...]", group=_KAFKA
    )
    input_topics: tuple[str, ...] = option(
        (),
        "input topic (repeat the flag for several; env/TOML: a comma-separated string or a "
        "list); the message key is the stream id",
        flag="--input-topic",
        metavar="TOPIC",
        group=_KAFKA,
    )
    output_topic: str = option("", "topic for the outputs (key = stream id)", group=_KAFKA)
    dlq_topic: str = option(
        "",
        "dead-letter topic for bad records (original key and value, the value bounded by "
        "--dlq-max-value-bytes; reason, detail and source topic/partition/offset in headers)",
        default_text="<output topic>-dlq",
        group=_KAFKA,
    )
    group_id: str = option("lstm-stream", "Kafka consumer group id", group=_KAFKA)
    # option() returns a dataclasses.field; for a map, one with default_factory=dict.
    kafka: dict[str, Any] = option(  # noqa: RUF009
        {},
        "pass an option to the aiokafka clients (repeatable), e.g. "
        "security_protocol=SASL_SSL, sasl_mechanism=PLAIN, sasl_plain_username=U, "
        "sasl_plain_password=P, ssl_cafile=PATH; prefix with 'consumer.' or 'producer.' for "
        "one client only. Secret values are never logged",
        flag="--kafka-option",
        group=_KAFKA,
    )
    # model and engine (declared in processor.config.engine_options, shared with replay, demo
    # and bench)
    engine: EngineOptions = field(default_factory=EngineOptions)
    # runtime
    max_delay_ms: float = option(
        5.0,
        "longest a record waits for its batch to fill before the batch runs anyway",
        check=at_least(0),
        group=_RUNTIME,
    )
    queue_max_records: int = option(
        16_384,
        "backpressure high-water mark: records fetched but not yet acknowledged (queued, "
        "computing or being produced); at it every assigned partition is paused; at least "
        "--max-batch",
        check=at_least(1),
        group=_RUNTIME,
    )
    queue_low_records: int = option(
        -1,
        "backpressure low-water mark: paused partitions resume at or below it; -1 = half of "
        "--queue-max-records",
        default_text="-1 (half of --queue-max-records)",
        group=_RUNTIME,
    )
    commit_interval_ms: int = option(
        1000,
        "checkpoint interval: how often the states of the streams changed since the last "
        "checkpoint are written to the state topic and the offsets of the records they cover "
        "committed (only ever after those records' outputs and dead letters are "
        "acknowledged). Shorter: less re-processing after a crash, more state bytes written",
        check=at_least(1),
        group=_RUNTIME,
    )
    drain_timeout: float = option(
        30.0,
        "seconds to finish in-flight work on shutdown or partition revocation before giving up",
        check=above(0),
        group=_RUNTIME,
    )
    max_record_bytes: int = option(
        4 * 1024 * 1024,
        "largest accepted input record; larger ones go to the dead-letter topic as 'oversize' "
        "(without their value)",
        check=at_least(1),
        group=_RUNTIME,
    )
    dlq_max_value_bytes: int = option(
        65_536,
        "largest original value a dead letter carries; a longer one is cut to this many bytes "
        "(header lstm-stream.value-truncated = its original size), and a dead letter the "
        "producer or broker refuses as too large is re-sent without its value; 0 = never "
        "carry the value",
        check=at_least(0),
        group=_RUNTIME,
    )
    metrics_port: int = option(
        0,
        "port of the HTTP server with /metrics (Prometheus), /healthz and /readyz; 0 = off",
        check=(at_least(0), lambda v: None if v < 65536 else "must be <= 65535"),
        group=_RUNTIME,
    )
    metrics_host: str = option("0.0.0.0", "address the metrics server binds", group=_RUNTIME)
    log_level: str = option(
        "INFO", "logging level of the processor", choices=LOG_LEVELS, group=_RUNTIME
    )
    # topic management
    topic_partitions: int = option(
        -1,
        "partitions of the output and dead-letter topics the processor creates when they are "
        "missing (and of missing input topics with --create-input-topics); -1 = as many as "
        "the first input topic has (1 for a created input topic)",
        check=at_least_or(1, -1, "as many as the first input topic"),
        group=_TOPICS,
    )
    topic_replication_factor: int = option(
        -1,
        "replication factor of the topics the processor creates; -1 = the broker's default",
        check=at_least_or(1, -1, "the broker's default"),
        group=_TOPICS,
    )
    create_input_topics: bool = option(
        False,
        "create a missing input topic (with --topic-partitions partitions, 1 when that is "
        "-1); off: the processor waits for it to appear",
        group=_TOPICS,
    )
    # durable state
    processing_guarantee: str = option(
        "at-least-once",
        "at-least-once: outputs and dead letters are acknowledged before the stream states "
        "that cover them are written to the state topic, and those before the input offsets "
        "are committed; after a crash, records answered since the last checkpoint may be "
        "answered again, with identical values. exactly-once: per input partition, one "
        "transactional producer puts that partition's outputs, dead letters, state records "
        "and consumed offsets into one transaction per commit interval; a read_committed "
        "reader sees every output once, up to one commit interval later (needs the state "
        "topic)",
        choices=GUARANTEES,
        group=_STATE,
    )
    transaction_timeout_ms: int = option(
        30_000,
        "exactly-once: the broker aborts a transaction left open this long (a member that "
        "died and never came back: until then read_committed readers of the output topic "
        "wait at its open transaction); must exceed twice --commit-interval-ms. A "
        "transaction that outlives it (the broker stalled) is fenced: the member rejoins the "
        "group and the partition is restored from its last commit",
        check=at_least(1000),
        group=_STATE,
    )
    state_topic: str = option(
        "",
        "compacted topic holding each stream's latest state (key = stream id, partition = "
        "its input partition), written at every commit interval and read back when a "
        f"partition is assigned; '{NO_STATE_TOPIC}' keeps states in this process only (a "
        "restart or a moved partition restarts its streams from the initial state). With "
        "several input topics leave it unset: each gets its default",
        default_text="<group id>-<input topic>-state",
        group=_STATE,
    )
    on_state_mismatch: str = option(
        "refuse",
        "what to do when the state topic holds states of a model with other state names or "
        "shapes: refuse (stop with an error) or reset (those streams start from the initial "
        "state; the next checkpoints overwrite their records)",
        choices=STATE_MISMATCH_ACTIONS,
        group=_STATE,
    )
    config_file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Resolve derived defaults (frozen: through object.__setattr__), then validate.
        if not self.dlq_topic and self.output_topic:
            object.__setattr__(self, "dlq_topic", f"{self.output_topic}-dlq")
        if self.queue_low_records == -1:
            object.__setattr__(self, "queue_low_records", self.queue_max_records // 2)
        object.__setattr__(self, "input_topics", tuple(self.input_topics))
        object.__setattr__(self, "kafka", {str(k): v for k, v in self.kafka.items()})
        found = config.problems(self) + self._relations()
        if found:
            raise ConfigError("invalid settings: " + "; ".join(found))

    def _relations(self) -> list[str]:
        """Rules that tie several values together (single values: see the declarations)."""
        out: list[str] = []
        if not self.bootstrap_servers:
            out.append("--bootstrap-servers is empty")
        if not self.input_topics:
            out.append("at least one --input-topic is required")
        if not self.output_topic:
            out.append("--output-topic is required")
        if not self.engine.model:
            out.append("--model is required")
        if len(set(self.input_topics)) != len(self.input_topics):
            out.append(f"--input-topic repeats a topic: {list(self.input_topics)}")
        for name in (self.output_topic, self.dlq_topic):
            if name and name in self.input_topics:
                out.append(f"topic {name!r} is both an input and an output")
        if self.output_topic and self.dlq_topic == self.output_topic:
            out.append("--dlq-topic must differ from --output-topic")
        if not self.group_id:
            out.append("--group-id is empty")
        if self.state_topic and self.state_topic != NO_STATE_TOPIC:
            if len(self.input_topics) > 1:
                out.append(
                    "--state-topic names one state topic but there are several input topics: "
                    "leave it unset (each input topic gets <group id>-<topic>-state)"
                )
            if self.state_topic in (*self.input_topics, self.output_topic, self.dlq_topic):
                out.append(f"--state-topic {self.state_topic!r} is also an input or output")
        if self.exactly_once and not self.durable:
            out.append(
                f"--processing-guarantee {EXACTLY_ONCE} needs the state topic: a transaction "
                f"commits stream states with the offsets (drop --state-topic {NO_STATE_TOPIC})"
            )
        if self.exactly_once and self.transaction_timeout_ms <= 2 * self.commit_interval_ms:
            out.append(
                f"--transaction-timeout-ms {self.transaction_timeout_ms} must exceed twice "
                f"--commit-interval-ms {self.commit_interval_ms} (a transaction stays open one "
                "interval and then commits; the broker must not abort it meanwhile)"
            )
        if not 0 <= self.queue_low_records < self.queue_max_records:
            out.append(
                f"--queue-low-records {self.queue_low_records} must be below "
                f"--queue-max-records {self.queue_max_records}"
            )
        if self.queue_max_records < self.engine.max_batch:
            out.append(
                f"--queue-max-records {self.queue_max_records} must be >= --max-batch "
                f"{self.engine.max_batch} (a full batch must fit in the queue)"
            )
        return out

    # ---- views ---------------------------------------------------------------------------

    @property
    def exactly_once(self) -> bool:
        """``--processing-guarantee exactly-once``: one transaction per input partition and
        commit interval."""
        return self.processing_guarantee == EXACTLY_ONCE

    @property
    def durable(self) -> bool:
        """Stream states are checkpointed to a state topic (``--state-topic`` not 'none')."""
        return self.state_topic != NO_STATE_TOPIC

    def state_topics(self) -> dict[str, str]:
        """Input topic -> its state topic (empty when durable state is off)."""
        if not self.durable:
            return {}
        if self.state_topic:
            return {t: self.state_topic for t in self.input_topics}
        return {t: f"{self.group_id}-{t}-state" for t in self.input_topics}

    def redacted(self) -> dict[str, Any]:
        """All settings as a dict that is safe to log (secret Kafka options masked)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "kafka":
                value = {k: (REDACTED if is_secret_option(k) else v) for k, v in value.items()}
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({body})"


def run_options() -> tuple[config.Option, ...]:
    """Every option of ``run``: the processor's own, then the engine's."""
    return options_of(Settings) + options_of(EngineOptions)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``run`` option to ``parser``, plus ``--config``.

    Flags default to ``argparse.SUPPRESS`` so that :func:`settings_from_args` can tell a
    flag that was given from one that was not (flags > env > file > defaults); the help
    text of each states its environment variable, TOML key and real default.
    """
    names = (_KAFKA, _RUNTIME, _TOPICS, _STATE, ENGINE_GROUP)
    groups = {name: parser.add_argument_group(name) for name in names}
    add_arguments(parser, run_options(), layered=True, groups=groups, required={"model"})
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"TOML file with settings (flag names as keys, a [kafka] table) [env {CONFIG_ENV}] "
        "(default: none)",
    )


def settings_from_args(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from parsed flags (see :func:`add_settings_arguments`), the
    environment (``os.environ`` unless given) and the optional TOML file; precedence
    flags > env > file > defaults.

    Raises :class:`ConfigError` naming the source of every value that cannot be parsed and
    listing every invalid value (the engine's first). Unknown ``LSTM_STREAM_*`` variables
    are ignored (other tools use the prefix); unknown TOML keys are errors (a typo must not
    silently fall back to a default).
    """
    env = os.environ if environ is None else environ
    given = vars(args) if args is not None else {}
    config_file = given.get("config") or env.get(CONFIG_ENV) or None
    table = load_toml(config_file) if config_file else None
    values = resolve(run_options(), given, env, table, table_name=f"config file {config_file!r}")
    engine_names = {o.name for o in options_of(EngineOptions)}
    engine = EngineOptions(**{k: v for k, v in values.items() if k in engine_names})
    own = {k: v for k, v in values.items() if k not in engine_names}
    return Settings(engine=engine, config_file=config_file, **own)


def configure_logging(level: str) -> None:
    """Apply ``--log-level`` of ``run`` to the root logger (installing a handler if the CLI
    did not). The default level leaves the root level alone, so the top-level
    ``lstm-stream --log-level X run ...`` keeps working."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        root.setLevel(level)
    elif level != Settings.__dataclass_fields__["log_level"].default:
        root.setLevel(level)
