#!/usr/bin/env python3
"""Renders RELIABILITY.md from the fault suite's report (one JSON line per
scenario run, written by the tests when OUTBOX_FAULT_REPORT is set).

    render-reliability.py REPORT.jsonl SECONDS > RELIABILITY.md
"""

import json
import os
import platform
import subprocess
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
  committed. A replayed dead letter is handled under the original
  message's id, so it never runs a handler that committed the original.
- **Order within a group is commit order.** Messages of one group (a
  customer, say) are handled in the order their producer transactions
  committed (ARCHITECTURE.md defines it), also when producers of the group
  overlap: on PostgreSQL the enqueue takes a per-group lock held to commit.
  A group is in one relay's hands at a time, and rows handed to an
  in-process queue hold it until a worker confirms them. A failing message
  holds back its group only. What the toolkit gives up on (a dead letter,
  a dead row) lets its group move on.
- **Attempts are the handler's own failed runs**, stored per message and
  handler: a delivery held back behind its group, an outage of the queue or
  the database, or a transaction the database aborted uses none.
  `ctx.attempt()` is that count from 1; after `max_attempts` the handler
  gives up, writing its dead letter and inbox row in one transaction.
- **A failure is kept, not dropped.** A handler out of attempts, a message
  that can never be handled (malformed, unknown type, a version from the
  future), a row the queue refuses and a message the SQS queue moved to its
  DLQ (once imported) are kept with their error, in the dead-letter table
  or as dead rows, until an operator replays or purges them
  (`sample-app dead-letters`, `sample-app outbox`).
- **Limits are checked where the mistake is made.** A message too large for
  the transport is refused at enqueue; a publish call respects SQS's limits
  for a whole batch.

## The fault suite

Each row is one test of the suite, run by `scripts/test` in CI (it fails if
any message is lost, any handler effect is committed twice, or a history
breaks a check) and by `scripts/reliability`, which rewrote this file.
*Handled* counts messages whose effect is in the database; *duplicate
effects* counts effects committed twice; *suppressed* counts redeliveries
the inbox absorbed, where the test can count them (for the killed process:
in its last run only). The history checker (`outbox-runtime/tests/history`)
also counts *order* violations (adjacent pairs of handler effects out of
their group's commit order), *stuck* groups (still pending when the settle
bound passed) and *attempt* mismatches (handler runs whose `ctx.attempt()`
did not count the handler's own failed runs, and give-ups after the wrong
number of them), and *other* failures outside those checks (a producer
transaction that ran out of retries, a task that panicked); `-` where a
test does not check them.
"""

HOLES = """\
## Each hole, and the test that closed it

The first test of each row failed on the code before its fix, or with the
fix taken out again (the commits quote the failures); the others cover the
same hole on another path or store. All pass in the run that wrote this
file; `scripts/fault-tests.filter` selects them.

| what broke | tests |
|---|---|
| overlapping producers of one group published out of commit order (PostgreSQL) | `claim::overlapping_producers_of_a_group_are_published_in_commit_order`, `claim::a_group_with_a_leased_row_is_not_claimed_again`, the history checker |
| rows handed to a queue did not hold their group | `relayed_rows_hold_their_group` (both stores), `claim::a_relayed_row_holds_its_group_until_confirmed_or_past_its_deadline`, the history checker |
| held-back deliveries used up handler attempts | `held_back_deliveries_use_up_no_attempts` (both stores), `on_lambda_a_held_back_record_uses_no_attempts` (SQS), `a_deadlock_in_the_handlers_transaction_uses_no_attempt`, `connections_killed_mid_batch_lose_nothing` (a database outage), the history checker |
| a queue outage used up publish attempts | `publish_failures_back_off_and_an_outage_uses_no_attempts`, `a_full_queue_makes_the_relay_wait_without_using_attempts`, `oversized_message_is_dead_lettered_without_blocking_other_groups` (held-back entries untouched) |
| giving up was two steps | `a_second_delivery_waits_for_the_first_and_does_not_run_the_handler` (a concurrent delivery waits on the first's inbox reservation, so no give-up races a commit) |
| a handler that ignored a failed statement could make PostgreSQL roll back a batch's commit silently | `a_run_whose_statement_failed_is_not_done_though_the_handler_returned_ok` |
| a delivery that waited on another's reservation read the attempts from before the wait | `a_delivery_that_waited_for_another_counts_that_ones_failure` |
| a Lambda deadline already past could stop a batch from making progress | `a_past_deadline_holds_back_all_but_the_first_transaction` (both stores), `orders_flow_from_the_api_function_through_sqs_to_the_consumer_function_exactly_once_in_order` (cargo-lambda's emulator sends a past deadline) |
| one failing handler in a batched transaction could undo or hold back others | `one_failing_handler_in_a_batch_rolls_back_alone`, `a_failing_head_holds_back_its_group_across_the_batch` (both stores), the history checker (1-8 handler runs per transaction) |
| replaying a poison dead letter reran committed handlers | `replaying_a_poison_dead_letter_skips_the_handlers_that_committed` (both stores) |
| a batch too large in total stuck its rows; one failing queue discarded what others accepted | `a_batch_larger_than_one_request_allows_is_sent_in_several`, `what_one_queue_accepted_is_kept_when_another_queue_fails` (SQS) |
| oversized payloads were caught only at publish | `a_message_too_large_for_the_transport_is_refused_at_enqueue` (both stores) |
| a long outage on Lambda sent messages out of sight, to the SQS DLQ | `with_backoff_a_record_to_retry_waits_out_its_delay`, `messages_in_the_queues_dlq_are_imported_as_dead_letters` (SQS), `the_queues_dead_letters_are_imported_and_listed` (sample) |
| the in-process queue grew without bound and republished rows of lagging consumers | `a_live_relay_keeps_its_relayed_rows_while_consumers_lag`, `a_full_queue_makes_the_relay_wait_without_using_attempts` (both stores) |
| a relay whose lease ran out could overwrite rows | `a_relay_whose_lease_ran_out_cannot_overwrite_the_rows` (both stores) |
| a relay could drop the row of a group it emptied while a producer was enqueueing into it, leaving the producer's row unclaimed forever (PostgreSQL's groups table) | `claim::a_producer_racing_the_drop_of_its_emptied_group_keeps_its_row`, `claim::a_claim_drops_the_row_of_a_group_without_rows`, `claim::a_group_another_claim_is_leasing_is_skipped_and_not_claimed_after` |
| an upgrade could lose or reorder rows (PostgreSQL's migration to groups and archive) | `claim::rows_of_every_state_survive_the_migration_to_groups_and_archive` |
| the pump's group accepted as an app group; in-process `extend` did nothing; TLS not required for the secret's database URL | `a_group_that_sqs_would_reject_is_refused_before_anything_is_written`, `extending_a_delivery_keeps_it_invisible_past_the_visibility_timeout`, the `postgres_url_from_secret` doc test (in CI's doc tests) |

"""

# The history checker's columns: (record field, heading, what it counts).
CHECKED = [
    ("order_violations", "order", "order violations"),
    ("stuck_groups", "stuck", "stuck groups"),
    ("attempt_mismatches", "attempt", "attempt mismatches"),
    ("harness_problems", "other", "other failures (a producer out of retries, a task panicked)"),
]


def count(record, field):
    """A column's cell: the count, or `-` when the test does not check it."""
    value = record.get(field)
    return "-" if value is None else f"{value:,}"


def commit():
    """The commit the suite ran on, marked when the tree had changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":!RELIABILITY.md"]).returncode
    return f"{head} (with uncommitted changes)" if dirty else head


def main():
    path, seconds, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
    if status != 0:
        out.append("")
        out.append(
            f"**The suite failed (exit status {status})**: a test failed besides or beyond the "
            "counts above; `scripts/reliability`'s output says which."
        )
    out.append("")
    out.append(HOLES)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpus = os.cpu_count()
    out.append(
        f"Generated by `scripts/reliability` at commit {commit()} on {stamp}, in {seconds} s, "
        f"on {platform.system()} "
        f"{platform.machine()} with {cpus} CPUs. The tests are in `sample-app/tests/faults.rs`, "
        "`outbox-runtime/tests/sqs.rs`, `outbox-runtime/tests/pipeline/scenarios.rs`, "
        "`outbox-runtime/tests/envelope_fuzz.rs` and `outbox-runtime/tests/history`; "
        "`scripts/fault-tests.filter` selects them."
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
