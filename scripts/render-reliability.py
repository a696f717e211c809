#!/usr/bin/env python3
"""Renders RELIABILITY.md from the fault suite's report (one JSON line per
scenario run, written by the tests when OUTBOX_FAULT_REPORT is set).

    render-reliability.py REPORT.jsonl SECONDS > RELIABILITY.md
"""

import json
import os
import platform
import sys
from datetime import datetime, timezone

GUARANTEES = """\
# Reliability

What the toolkit promises, and the faults that test it.

## The guarantees

- **Nothing is lost.** A message is a row written in the same transaction as
  the change it announces: both commit or neither does. The row is only
  marked published once the queue has it (SQS) or once a handler committed
  it (the in-process queue, which dies with its process). Anything else
  leaves it to be published again.
- **Nothing is done twice.** Delivery is at least once; a handler's effects
  commit in one transaction with an inbox row keyed by (message id,
  handler), so a redelivered message skips the handlers that already
  committed.
- **Order within a group.** Messages of one group (a customer, say) are
  published and handled in the order they were committed; a failing
  message holds back its group only, never the others.
- **A failure is kept, not dropped.** A handler out of attempts, a message
  that can never be handled (malformed, unknown type, a version from the
  future) or a row the queue refuses is kept with its error, in the
  dead-letter table or as a dead row, until an operator replays or purges
  it (`sample-app dead-letters`, `sample-app outbox`).
- **An outage waits, it does not spin.** A queue or database that is down
  leaves rows pending; retries back off exponentially and an outage never
  counts against a row's attempts.

## The fault suite

Each row is one test of the suite, run by `scripts/test` in CI (it fails if
any message is lost or any handler effect is committed twice) and by
`scripts/reliability`, which rewrote this file. *Handled* counts messages
whose effect is in the database; *duplicate effects* counts effects
committed twice; *suppressed* counts redeliveries the inbox absorbed, where
the test can count them (for the killed process: in its last run only).
The history checker (`outbox-runtime/tests/history`) also counts *order*
violations (adjacent pairs of handler effects out of their group's commit
order), *stuck* groups (still pending when the settle bound passed) and
*attempt* mismatches (handler runs whose `ctx.attempt()` did not count the
handler's own failed runs, and give-ups after the wrong number of them);
`-` where a test does not check them.
"""

# The history checker's columns: (record field, heading, what it counts).
CHECKED = [
    ("order_violations", "order", "order violations"),
    ("stuck_groups", "stuck", "stuck groups"),
    ("attempt_mismatches", "attempt", "attempt mismatches"),
]


def count(record, field):
    """A column's cell: the count, or `-` when the test does not check it."""
    value = record.get(field)
    return "-" if value is None else f"{value:,}"


def main():
    path, seconds = sys.argv[1], int(sys.argv[2])
    records = []
    if os.path.exists(path):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise SystemExit(f"{path}: no fault records; did the suite run?")
    order = [
        "relay and worker process killed mid-drain",
        "the queue is down",
        "database connections killed mid-batch",
        "a handler panics",
        "two relays and two workers at once",
        "four relays and four workers at once",
        "malformed envelopes",
        "random histories, checked",
    ]
    records.sort(key=lambda r: (order.index(r["scenario"]) if r["scenario"] in order else 99, r["injection"]))
    out = [GUARANTEES]
    headings = " | ".join(heading for _, heading, _ in CHECKED)
    out.append(
        "| scenario | how it is injected | runs | sent | handled | lost | duplicate effects "
        f"| suppressed | {headings} |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(CHECKED))
    for r in records:
        checked = " | ".join(count(r, field) for field, _, _ in CHECKED)
        out.append(
            f'| {r["scenario"]} | {r["injection"]} | {r["runs"]:,} | {r["sent"]:,} | {r["handled"]:,} '
            f'| {r["lost"]:,} | {r["duplicate_effects"]:,} | {count(r, "duplicates_suppressed")} '
            f"| {checked} |"
        )
    lost = sum(r["lost"] for r in records)
    dup = sum(r["duplicate_effects"] for r in records)
    totals = "".join(
        f", {sum(r.get(field) or 0 for r in records):,} {counted}"
        for field, _, counted in CHECKED
        if any(r.get(field) is not None for r in records)
    )
    out.append("")
    out.append(
        f"In all: {sum(r['sent'] for r in records):,} messages or inputs, {lost} lost, "
        f"{dup} duplicate effects{totals}. Malformed envelopes count inputs: each decoded to a valid "
        "envelope or was refused with a typed error, none panicked; at the consumer such a "
        "message goes to the dead-letter table (`poison_is_dead_lettered_and_acknowledged` "
        "in `outbox-runtime/tests/pipeline`, and the Lambda and SQS tests in "
        "`outbox-runtime/tests/sqs.rs`)."
    )
    out.append("")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpus = os.cpu_count()
    out.append(
        f"Generated by `scripts/reliability` on {stamp}, in {seconds} s, on {platform.system()} "
        f"{platform.machine()} with {cpus} CPUs. The tests are in `sample-app/tests/faults.rs`, "
        "`outbox-runtime/tests/sqs.rs`, `outbox-runtime/tests/pipeline/scenarios.rs`, "
        "`outbox-runtime/tests/envelope_fuzz.rs` and `outbox-runtime/tests/history`; "
        "`scripts/fault-tests.filter` selects them."
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
