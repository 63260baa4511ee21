"""Verdicts on the host-path goals (:mod:`processor.bench.host`,
:mod:`processor.bench.host_kafka`): the engine against its step-only floor, replay against
the codec floor, and ``run`` against Kafka's ProducerPerformance. Each is a pure function of
its section's results returning one row of the goals table (see
:func:`processor.bench.goals.verdict`); a section measured below its goal's sizes
(``--quick``) is NOT RUN, with its figures shown."""

from __future__ import annotations

from typing import Any

from processor.bench.goals import HOST_KAFKA_STREAMS, HOST_MODEL, HOST_STREAMS, verdict
from processor.bench.results import SectionStatus, fmt


def _below(section: dict[str, Any], goal_streams: int) -> str:
    """The detail's note when ``section`` ran below the goal's stream count."""
    if section.get("goal_sizes"):
        return ""
    return f"; measured at {section.get('streams')} streams, the goal is judged at {goal_streams:,}"


def host_engine(he: dict[str, Any]) -> dict[str, Any]:
    """The ``host_engine`` goal: ``Engine.process`` over the step-only floor (median-based
    rates, same time slices)."""
    if he.get("status") != SectionStatus.RAN:
        return verdict("host_engine", None, "n/a", str(he.get("reason", "not measured")))
    ratio = float(he["process_over_floor"])
    xla = he.get("floor_xla_ms_p50")
    detail = (
        f"Engine.process {he['process_ms_p50']:.3f} ms per batch of {he['batch']} vs the "
        f"step-only floor {he['floor_ms_p50']:.3f} ms"
        + (f" (XLA floor {xla:.3f} ms)" if xla is not None else "")
        + f": {he['bookkeeping_us_per_record']:.2f} us of bookkeeping per record"
    )
    return verdict(
        "host_engine",
        ratio,
        f"{ratio:.0%}",
        detail + _below(he, HOST_STREAMS),
        scope=f"{HOST_MODEL}, batch {he['batch']}",
        ran=bool(he.get("goal_sizes")),
    )


def host_replay(hr: dict[str, Any]) -> dict[str, Any]:
    """The ``host_replay`` goal: replay's rate over the msgpack codec floor's."""
    if hr.get("status") != SectionStatus.RAN:
        return verdict("host_replay", None, "n/a", str(hr.get("reason", "not measured")))
    ratio = float(hr["replay_over_codec"])
    detail = (
        f"replay {fmt(hr['replay']['msg_per_s_median'], 0)} msg/s vs msgpack alone "
        f"{fmt(hr['codec_floor']['msg_per_s_median'], 0)} msg/s (unpack "
        f"{hr['unpack_us_per_record']:.2f} us per record, pack {hr['pack_us_per_output']:.2f} "
        "us per output)"
    )
    return verdict(
        "host_replay",
        ratio,
        f"{ratio:.0%}",
        detail + _below(hr, HOST_STREAMS),
        scope=f"{HOST_MODEL}, {hr['streams']} streams",
        ran=bool(hr.get("goal_sizes")),
    )


def host_kafka(hk: dict[str, Any]) -> dict[str, Any]:
    """The ``host_kafka`` goal: ``run`` end to end over ProducerPerformance's records/s
    (NOT RUN without a broker or without ProducerPerformance)."""
    if hk.get("status") != SectionStatus.RAN:
        return verdict("host_kafka", None, "n/a", str(hk.get("reason", "not measured")))
    pp = hk.get("producer_performance", {})
    if "run_over_producer_performance" not in hk:
        why = pp.get("not_run", "ProducerPerformance not measured")
        return verdict("host_kafka", None, "n/a", f"ProducerPerformance: {why}")
    ratio = float(hk["run_over_producer_performance"])
    detail = (
        f"run {fmt(hk['msg_per_s'], 0)} records/s vs ProducerPerformance "
        f"{fmt(pp['records_per_s'], 0)} records/s of {pp['record_size']} B; aiokafka floors: "
        f"getmany {fmt(hk['getmany']['records_per_s'], 0)} records/s, BatchBuilder.append "
        f"{fmt(hk['batch_append']['msg_per_s_median'], 0)} records/s"
    )
    return verdict(
        "host_kafka",
        ratio,
        f"{ratio:.0%}",
        detail + _below(hk, HOST_KAFKA_STREAMS),
        scope=f"{HOST_MODEL}, {hk['records']:,} records of {hk['streams']} streams",
        ran=bool(hk.get("goal_sizes")),
    )
