"""The Kafka client flags ``produce`` and ``tail`` share, where their values come from, and
how a failure ends either tool.

Both tools take the Kafka client options ``run`` takes, from the same sources with the same
precedence (:func:`kafka_options_from`): ``--kafka-option KEY=VALUE`` flags over
``LSTM_STREAM_KAFKA_<KEY>`` variables over the ``[kafka]`` table of a TOML file
(``--config`` or ``LSTM_STREAM_CONFIG``; the file ``run`` reads works, its other keys are
``run``'s and ignored here). :func:`report_failure` prints a failure as one line and gives the
exit code: 2 for invalid options, 3 when the cluster refused the client, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processor.config.declare import option, options_of
from processor.config.flags import add_arguments
from processor.config.sources import CONFIG_ENV, load_toml, resolve
from processor.errors import ConfigError, KafkaAccessError, LstmStreamError

__all__ = [
    "CONFIG_ENV",
    "KafkaSources",
    "add_kafka_arguments",
    "kafka_options_from",
    "report_failure",
]


@dataclass(frozen=True)
class KafkaSources:
    """The Kafka client options of ``produce`` and ``tail``, declared as ``run`` declares
    its own (same flag, variables and TOML table; see :mod:`processor.config.declare`)."""

    # option() returns a dataclasses.field; for a map, one with default_factory=dict.
    kafka: dict[str, Any] = option(  # noqa: RUF009
        {},
        "pass an option to the aiokafka client (repeatable), as run's --kafka-option, e.g. "
        "security_protocol=SASL_SSL, sasl_mechanism=SCRAM-SHA-512, sasl_plain_username=U, "
        "sasl_plain_password=P, ssl_cafile=PATH. Secret values are never logged",
        flag="--kafka-option",
    )


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """``--kafka-option`` (layered: its help names the variables and the table, never their
    values) and ``--config``."""
    add_arguments(parser, options_of(KafkaSources), layered=True)
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,  # the help states the default itself
        metavar="FILE",
        help="TOML file whose [kafka] table (sub-tables [kafka.consumer], [kafka.producer]) "
        "holds Kafka client options; run's file works, its other keys are ignored "
        f"[env {CONFIG_ENV}] (default: none)",
    )


def kafka_options_from(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Kafka client options of a ``produce``/``tail`` command line: ``--kafka-option``
    flags over ``LSTM_STREAM_KAFKA_<KEY>`` variables (``environ``, default ``os.environ``)
    over the ``[kafka]`` table of the ``--config``/``LSTM_STREAM_CONFIG`` file, merged key by
    key (:func:`processor.config.sources.resolve`, as ``run`` merges them). Only that table
    of the file is read. :class:`~processor.errors.ConfigError` for an unreadable file, a
    ``kafka`` key that is not a table, or a flag without ``=``."""
    env = os.environ if environ is None else environ
    path = getattr(args, "config", None) or env.get(CONFIG_ENV) or None
    table: dict[str, Any] = {}
    if path:
        data = load_toml(path)
        if "kafka" in data:
            table["kafka"] = data["kafka"]
    given = {"kafka": args.kafka} if getattr(args, "kafka", None) else {}
    values = resolve(
        options_of(KafkaSources), given, env, table, table_name=f"config file {path!r}"
    )
    return dict(values.get("kafka", {}))


def report_failure(tool: str, exc: LstmStreamError) -> int:
    """Print ``lstm-stream TOOL: <exc>`` on stderr; the exit code for it: 2 for invalid
    options (:class:`ConfigError`), :attr:`KafkaAccessError.exit_code` when the cluster
    refused the client, 1 for any other failure."""
    print(f"lstm-stream {tool}: {exc}", file=sys.stderr)
    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, KafkaAccessError):
        return KafkaAccessError.exit_code
    return 1
