"""The project's performance goals: :data:`GOALS`, each a :class:`Goal` with its threshold,
and how one is judged (:func:`verdict`, a :class:`Status`).

``docs/benchmarks/goals.md`` (:data:`GOALS_DOC`) has a section per goal id saying what is
measured, why the threshold matters and how to reproduce it. A goal is PASS or MISS by the
figures of the run being reported, or NOT RUN when that run lacks them: a MISS is a finding
of the run, not an error of the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A goal's verdict, as results.json and results.md spell it."""

    PASS = "PASS"
    MISS = "MISS"
    NOT_RUN = "NOT RUN"


#: The model of the headline figures, and the one the FLOP/s goal is judged on.
HEADLINE_MODEL = "lstm2x256"
FLOPS_MODEL = "lstm2x512"

#: The model of the host-path goals (``host_engine``, ``host_replay``, ``host_kafka``), and
#: the stream counts those goals are judged at: the engine and replay points, and the Kafka run.
HOST_MODEL = "free"
HOST_STREAMS = 1024
HOST_KAFKA_STREAMS = 2048

#: Where each goal is explained, relative to the repository root.
GOALS_DOC = "docs/benchmarks/goals.md"


@dataclass(frozen=True)
class Goal:
    """One performance goal of the project.

    ``statement`` is the goal with its threshold as the report prints it (the heading of
    the goal's section in ``docs/benchmarks/goals.md`` carries the same text); ``threshold``
    is the number the measured value is compared with: it must reach it, or, with
    ``at_most``, not exceed it.
    """

    id: str
    statement: str
    threshold: float
    at_most: bool = False

    def status(self, value: float) -> Status:
        """PASS when ``value`` meets the threshold, MISS otherwise (NaN included: a figure
        that could not be computed meets nothing)."""
        ok = value <= self.threshold if self.at_most else value >= self.threshold
        return Status.PASS if ok else Status.MISS


#: The project's performance goals, in report order.
GOALS: tuple[Goal, ...] = (
    Goal("engine_vs_b1", "engine >= 15x B1", 15.0),
    Goal("engine_vs_b0", "engine >= 500x B0", 500.0),
    Goal("engine_flops", "engine >= 50% of matmul FLOP/s", 0.5),
    Goal("cached_1m", "step time with 1M cached streams <= 1.25x with 1k", 1.25, at_most=True),
    Goal("replay", "replay >= 70% of engine-only msg/s", 0.7),
    Goal("kafka", "kafka end to end >= 50% of engine-only msg/s", 0.5),
    Goal("durable_cost", "kafka with durable state >= 85% of stateless msg/s", 0.85),
    Goal(
        "exactly_once",
        "kafka exactly-once >= 70% of at-least-once msg/s at a 1 s commit interval",
        0.7,
    ),
    Goal("restore", "restore >= 20k streams/s", 20_000.0),
    Goal(
        "tiers_1m",
        "step time with 1M streams across the tiers <= 1.25x with 1k",
        1.25,
        at_most=True,
    ),
    Goal("catchup", "catch-up scan >= 3x waves", 3.0),
    Goal("seed_frames", "engine >= 20x the seed's way on the seed frame model", 20.0),
    Goal(
        "frames_kafka",
        "camera frames through kafka (raw and JPEG) >= 50% of engine-only frames/s",
        0.5,
    ),
    Goal("host_engine", "engine >= 70% of the step-only floor on the free model", 0.7),
    Goal("host_replay", "replay >= 50% of the msgpack codec floor on the free model", 0.5),
    Goal(
        "host_kafka",
        "kafka end to end >= 70% of Kafka's ProducerPerformance records/s on the free model",
        0.7,
    ),
    # The measured value is the number of timed regions that retraced.
    Goal("no_retrace", "no retracing in steady state", 0.0, at_most=True),
)
_GOAL_BY_ID = {g.id: g for g in GOALS}


def verdict(
    gid: str,
    value: float | None,
    measured: str,
    detail: str = "",
    *,
    scope: str = "",
    ran: bool = True,
) -> dict[str, Any]:
    """One row of the goals table: goal ``gid`` judged on ``value`` (NOT RUN when ``ran``
    is false or there is no value); ``scope`` says what the figures were taken on."""
    goal = _GOAL_BY_ID[gid]
    status = goal.status(value) if ran and value is not None else Status.NOT_RUN
    return {
        "id": gid,
        "goal": goal.statement + (f" ({scope})" if scope else ""),
        "threshold": goal.threshold,
        "status": status,
        "measured": measured,
        "detail": detail,
    }
