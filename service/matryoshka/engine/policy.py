"""Which rows the next engine step advances: earliest (effective) deadline first, within a token budget.

Every job gets a deadline: its caller's (budget or gRPC deadline), or else a virtual one, its arrival
plus SLOWDOWN times the predicted time of its own work at its depth. Ordering by that is
shortest-job-first for jobs that arrive together (a 5-document request overtakes a 100-document one)
yet starves nobody: a long job's key is fixed at arrival, so once it has waited SLOWDOWN times its
own time, later short jobs sort after it. (With a factor of 1 a long job running beside another one
is always "late" and then holds every step until it is done, which is what short requests must not
wait for.) A step takes frontier buckets in that order until `max_step_tokens` padded tokens are
taken (always at least one bucket), so a step, and with it the wait of a newly arrived job, stays short.
"""

from __future__ import annotations

from collections.abc import Sequence

from matryoshka.engine.jobrun import Bucket, JobRun

SLOWDOWN = 4.0  # a job without a deadline is promised at most this multiple of its own time


def priority(run: JobRun, own_seconds: float) -> float:
    """The ordering key: the earlier of the caller's deadline and arrival + SLOWDOWN x the job's own
    predicted time."""
    virtual = run.job.arrived + SLOWDOWN * own_seconds
    guard = run.schedule.budget
    return min(guard.deadline, virtual) if guard is not None else virtual


def select(runs: Sequence[JobRun], max_step_tokens: int | None) -> list[tuple[JobRun, Bucket]]:
    """Frontier buckets for one step, most urgent job first, until the step's token budget is spent."""
    chosen: list[tuple[JobRun, Bucket]] = []
    used = 0
    for run in sorted((r for r in runs if not r.done), key=lambda r: (r.priority, r.job.arrived)):
        for bucket in run.frontier():
            size = bucket.padded_tokens
            if chosen and max_step_tokens is not None and used + size > max_step_tokens:
                continue
            chosen.append((run, bucket))
            used += size
    return chosen
