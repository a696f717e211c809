#!/usr/bin/env python3
"""Renders RELIABILITY.md from the fault suite's report (one JSON line per
scenario run, written by the tests when OUTBOX_FAULT_REPORT is set), and
checks that the suite and what this file says of it agree.

    render-reliability.py REPORT.jsonl SECONDS STATUS > RELIABILITY.md
    render-reliability.py --check       # the suite's tests against SCENARIOS and HOLES
    render-reliability.py --self-test   # each check catches a broken copy

The suite is what `scripts/fault-tests.filter` selects (a cargo-nextest
filterset: every test in a module named `faults`, a few binaries, two unit
tests by name). `--check` lists it with cargo-nextest and fails, naming the
test, when a test named in SCENARIOS or HOLES is not in it (renamed, moved
out of its `faults` module) or a test in it is in neither (a new scenario
nobody described). Rendering fails on a record of a scenario SCENARIOS does
not list, and, when the suite passed, on a scenario without a record.
"""

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILTER = ROOT / "scripts" / "fault-tests.filter"

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
  a dead row) lets its group move on, unless its handler holds its group
  (`on_dead_letter = "hold_group"`): then the group's later messages wait
  for that handler, in order, until an operator releases the group.
- **Attempts are the handler's own failed runs**, stored per message and
  handler: a delivery held back behind its group, an outage of the queue or
  the database, or a transaction the database aborted uses none.
  `ctx.attempt()` is that count from 1; after `max_attempts` the handler
  gives up, writing its dead letter and inbox row (or, for a handler that
  holds its group, the group's hold) in one transaction.
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

HOLES_INTRO = """\
## Each hole, and the test that closed it

The first test of each row failed on the code before its fix, or with the
fix taken out again (the commits quote the failures); the others cover the
same hole on another path or store. All pass in the run that wrote this
file; `scripts/fault-tests.filter` selects them.
"""


def t(name, note=""):
    """A test of the fault suite, by its name or the end of its path: each
    `::`-separated part must appear in the test's path, in order, the last
    as the test's own name (`claim::x` is `claim::faults::x`). A note saying
    `both stores` asks for two tests of that name (PostgreSQL and SQLite)."""
    return ("suite", name, note)


def elsewhere(name, note):
    """A test that is not in the fault suite (`scripts/test` runs it)."""
    return ("elsewhere", name, note)


def text(words):
    return ("text", words, "")


HISTORY = text("the history checker")

# What broke, and what shows it is fixed.
HOLES = [
    (
        "overlapping producers of one group published out of commit order (PostgreSQL)",
        [
            t("claim::overlapping_producers_of_a_group_are_published_in_commit_order"),
            t("claim::a_group_with_a_leased_row_is_not_claimed_again"),
            HISTORY,
        ],
    ),
    (
        "rows handed to a queue did not hold their group",
        [
            t("relayed_rows_hold_their_group", "(both stores)"),
            t("claim::a_relayed_row_holds_its_group_until_confirmed_or_past_its_deadline"),
            HISTORY,
        ],
    ),
    (
        "held-back deliveries used up handler attempts",
        [
            t("held_back_deliveries_use_up_no_attempts", "(both stores)"),
            t("on_lambda_a_held_back_record_uses_no_attempts", "(SQS)"),
            t("a_deadlock_in_the_handlers_transaction_uses_no_attempt"),
            t("connections_killed_mid_batch_lose_nothing", "(a database outage)"),
            HISTORY,
        ],
    ),
    (
        "a queue outage used up publish attempts",
        [
            t("publish_failures_back_off_and_an_outage_uses_no_attempts"),
            t("a_full_queue_makes_the_relay_wait_without_using_attempts"),
            t(
                "oversized_message_is_dead_lettered_without_blocking_other_groups",
                "(held-back entries untouched)",
            ),
        ],
    ),
    (
        "giving up was two steps",
        [
            t(
                "a_second_delivery_waits_for_the_first_and_does_not_run_the_handler",
                "(a concurrent delivery waits on the first's inbox reservation, so no give-up "
                "races a commit)",
            ),
        ],
    ),
    (
        "a handler that ignored a failed statement could make PostgreSQL roll back a batch's "
        "commit silently",
        [t("a_run_whose_statement_failed_is_not_done_though_the_handler_returned_ok")],
    ),
    (
        "a delivery that waited on another's reservation read the attempts from before the wait",
        [t("a_delivery_that_waited_for_another_counts_that_ones_failure")],
    ),
    (
        "a Lambda deadline already past could stop a batch from making progress",
        [
            t("a_past_deadline_holds_back_all_but_the_first_transaction", "(both stores)"),
            elsewhere(
                "an_invocation_without_a_deadline_works_for_the_fallback_budget",
                "(SQS: a deadline just past leaves the first transaction; none at all, as "
                "cargo-lambda's emulator sends, NO_DEADLINE_BUDGET; `scripts/test` runs it, not "
                "this suite)",
            ),
        ],
    ),
    (
        "one failing handler in a batched transaction could undo or hold back others",
        [
            t("one_failing_handler_in_a_batch_rolls_back_alone"),
            t("a_failing_head_holds_back_its_group_across_the_batch", "(both stores)"),
            text("the history checker (1-8 handler runs per transaction)"),
        ],
    ),
    (
        "a held group ran out of order around its releases (a replay that gave up again, a "
        "release while a replay of the previous one was on its way), or lost a message kept "
        "earlier in the same batch",
        [
            t("a_release_whose_replay_gives_up_holds_the_group_again", "(both stores)"),
            t("a_release_runs_its_replays_only_in_turn", "(both stores)"),
            t(
                "a_late_copy_of_a_kept_message_during_a_release_does_not_stick_the_group",
                "(both stores)",
            ),
            text("the history checker (its ledger handler holds its groups)"),
        ],
    ),
    (
        "replaying a poison dead letter reran committed handlers",
        [t("replaying_a_poison_dead_letter_skips_the_handlers_that_committed", "(both stores)")],
    ),
    (
        "a batch too large in total stuck its rows; one failing queue discarded what others "
        "accepted",
        [
            t("a_batch_larger_than_one_request_allows_is_sent_in_several"),
            t("what_one_queue_accepted_is_kept_when_another_queue_fails", "(SQS)"),
        ],
    ),
    (
        "oversized payloads were caught only at publish",
        [
            t("a_message_too_large_for_the_transport_is_refused_at_enqueue", "(both stores)"),
            t(
                "publishing_a_message_too_large_for_the_transport_fails_and_publishes_nothing",
                "(`ctx.publish`, a unit test)",
            ),
        ],
    ),
    (
        "a long outage on Lambda sent messages out of sight, to the SQS DLQ",
        [
            t("with_backoff_a_record_to_retry_waits_out_its_delay"),
            t("messages_in_the_queues_dlq_are_imported_as_dead_letters", "(SQS)"),
            t("the_queues_dead_letters_are_imported_and_listed", "(sample)"),
        ],
    ),
    (
        "the in-process queue grew without bound and republished rows of lagging consumers",
        [
            t("a_live_relay_keeps_its_relayed_rows_while_consumers_lag"),
            t("a_full_queue_makes_the_relay_wait_without_using_attempts", "(both stores)"),
        ],
    ),
    (
        "a relay whose lease ran out could overwrite rows",
        [
            t("a_relay_whose_lease_ran_out_cannot_overwrite_the_rows", "(both stores)"),
            t(
                "claim::a_claim_whose_lease_ran_out_between_its_rounds_takes_each_row_once",
                "(within one claim)",
            ),
        ],
    ),
    (
        "a relay could drop the row of a group it emptied while a producer was enqueueing into "
        "it, leaving the producer's row unclaimed forever (PostgreSQL's groups table)",
        [
            t("claim::a_producer_racing_the_drop_of_its_emptied_group_keeps_its_row"),
            t("claim::a_claim_drops_the_row_of_a_group_without_rows"),
            t("claim::a_group_another_claim_is_leasing_is_skipped_and_not_claimed_after"),
        ],
    ),
    (
        "an upgrade could lose or reorder rows (PostgreSQL's migration to groups and archive)",
        [t("claim::rows_of_every_state_survive_the_migration_to_groups_and_archive")],
    ),
    (
        "the pump's group accepted as an app group; in-process `extend` did nothing; TLS not "
        "required for the secret's database URL",
        [
            t("a_group_that_sqs_would_reject_is_refused_before_anything_is_written"),
            t("extending_a_delivery_keeps_it_invisible_past_the_visibility_timeout"),
            text("the `postgres_url_from_secret` doc test (in CI's doc tests)"),
        ],
    ),
]

# The table's scenarios, in its order, each with the tests that report it
# (`FaultRecord::scenario`).
SCENARIOS = {
    "relay and worker process killed mid-drain": [
        "killing_the_worker_process_twenty_times_loses_and_duplicates_nothing"
    ],
    "the queue is down": [
        "a_queue_that_goes_down_holds_rows_without_a_busy_loop_and_delivery_resumes"
    ],
    "database connections killed mid-batch": ["connections_killed_mid_batch_lose_nothing"],
    "a handler panics": ["a_panicking_handler_fails_that_message_only"],
    "two relays and two workers at once": ["two_relays_and_two_workers_publish_once_in_group_order"],
    "four relays and four workers at once": [
        "four_relays_and_four_workers_publish_once_in_group_order"
    ],
    "work stopped by SIGTERM mid-drain, then the next worker": [
        "sigterm_mid_drain_then_the_next_worker_handles_the_rest_at_once"
    ],
    "a shutdown in the middle of a drain, then the next process": [
        "a_shutdown_mid_drain_loses_nothing_and_the_next_process_handles_the_rest_at_once"
    ],
    "malformed envelopes": [
        "hostile_input_decodes_or_is_a_typed_error_and_valid_envelopes_survive_the_wire"
    ],
    "random histories, checked": [
        "postgres_histories_hold",
        "sqlite_histories_hold",
        "postgres_histories_hold_on_sqs",
    ],
}

# The history checker's columns: (record field, heading, what it counts).
CHECKED = [
    ("order_violations", "order", "order violations"),
    ("stuck_groups", "stuck", "stuck groups"),
    ("attempt_mismatches", "attempt", "attempt mismatches"),
    ("early_runs", "early", "runs of delayed messages before their time"),
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


def holes_markdown():
    """The holes section, as RELIABILITY.md shows it."""
    out = [HOLES_INTRO, "| what broke | tests |", "|---|---|"]
    for what, items in HOLES:
        cells = []
        for kind, name, note in items:
            cell = name if kind == "text" else f"`{name}`"
            cells.append(f"{cell} {note}" if note else cell)
        out.append(f"| {what} | {', '.join(cells)} |")
    return "\n".join(out) + "\n\n"


def matches(name, path):
    """Whether a test's path (`claim::faults::x`) is the one `name` means."""
    want, parts = name.split("::"), path.split("::")
    if parts[-1] != want[-1]:
        return False
    modules = iter(parts[:-1])
    return all(part in modules for part in want[:-1])


def list_tests():
    """Every test of the workspace as (binary id, path, in the fault suite),
    from cargo-nextest with the suite's filter (builds what it must)."""
    expression = FILTER.read_text()
    run = subprocess.run(
        ["cargo", "nextest", "list", "--workspace", "--all-features", "--message-format", "json",
         "-E", expression],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"cargo nextest list failed (exit status {run.returncode})")
    tests = []
    for binary, suite in json.loads(run.stdout)["rust-suites"].items():
        for path, case in suite["testcases"].items():
            tests.append((binary, path, case["filter-match"]["status"] == "matches"))
    return tests


def test_problems(tests):
    """What disagrees between the tests the filter selects and what this
    file says of them: a test named here that is not selected (renamed,
    moved, or out of the suite), and a selected test that nothing here
    describes (neither a scenario of the table nor in a row of the holes)."""
    selected = [(binary, path) for binary, path, chosen in tests if chosen]
    everywhere = [(binary, path) for binary, path, _ in tests]
    found, described = [], set()
    for what, items in HOLES:
        for kind, name, note in items:
            if kind == "text":
                continue
            hits = [t for t in (selected if kind == "suite" else everywhere) if matches(name, t[1])]
            described.update(hits)
            wanted = 2 if "both stores" in note else 1
            if len(hits) < wanted:
                where = "in the fault suite" if kind == "suite" else "in the workspace"
                found.append(
                    f"hole {what!r}: {wanted} test(s) `{name}` expected {where}, "
                    f"found {len(hits)}"
                )
    for scenario, names in SCENARIOS.items():
        for name in names:
            hits = [t for t in selected if matches(name, t[1])]
            described.update(hits)
            if not hits:
                found.append(f"scenario {scenario!r}: no test `{name}` in the fault suite")
    for binary, path in selected:
        if (binary, path) not in described:
            found.append(
                f"{binary} {path}: in the fault suite, but neither a scenario of the table "
                "nor in a row of the holes (scripts/render-reliability.py)"
            )
    return found


def record_problems(records, status):
    """Records of scenarios this file does not know, and (when the suite
    passed) scenarios without a record: a test that stopped reporting."""
    found = [
        f"a record of scenario {r['scenario']!r}, which SCENARIOS does not list"
        for r in records
        if r["scenario"] not in SCENARIOS
    ]
    if status == 0:
        seen = {r["scenario"] for r in records}
        found += [f"no record of scenario {s!r} though the suite passed" for s in SCENARIOS if s not in seen]
    return found


def check():
    tests = list_tests()
    found = test_problems(tests)
    for problem in found:
        print(f"fault suite: {problem}", file=sys.stderr)
    if found:
        raise SystemExit(1)
    selected = sum(1 for _, _, chosen in tests if chosen)
    print(
        f"fault suite: {selected} of {len(tests)} tests selected by scripts/fault-tests.filter, "
        f"each a scenario of the table or in a row of the holes, and every test named there selected"
    )


def self_test():
    """Each check catches what it is for, on made-up lists of tests."""
    tests = []
    for _, items in HOLES:
        for kind, name, note in items:
            if kind == "text":
                continue
            path = "faults::" + name
            if "both stores" in note:
                tests += [("b", "faults::postgres::" + name, True), ("b", "faults::sqlite::" + name, True)]
            else:
                tests.append(("b", path, kind == "suite"))
    for names in SCENARIOS.values():
        tests += [("b", "faults::" + name, True) for name in names]
    tests.append(("b", "not_in_the_suite", False))
    if test_problems(tests):
        raise SystemExit(f"self-test: the made-up suite fails: {test_problems(tests)}")
    renamed = "faults::postgres::relayed_rows_hold_their_group"
    # The first test a hole names outside the suite.
    outside = next(name for _, items in HOLES for kind, name, _ in items if kind == "elsewhere")
    cases = {
        "a described test renamed": [
            (b, p + "_renamed" if p == renamed else p, c) for b, p, c in tests
        ],
        "a test in the suite that nothing describes": tests + [("b", "faults::a_new_scenario", True)],
        "a scenario's test out of the suite": [
            (b, p, c and not p.endswith("sqlite_histories_hold")) for b, p, c in tests
        ],
        "a test named outside the suite gone": [
            (b, p, c) for b, p, c in tests if not p.endswith(outside)
        ],
    }
    for what, broken in cases.items():
        caught = test_problems(broken)
        if not caught:
            raise SystemExit(f"self-test: {what} passed the checks")
        print(f"caught: {what}: {caught[0]}")
    records = [{"scenario": s} for s in SCENARIOS]
    if record_problems(records, 0):
        raise SystemExit(f"self-test: the made-up records fail: {record_problems(records, 0)}")
    for what, broken, status in [
        ("a record of an unknown scenario", records + [{"scenario": "renamed"}], 1),
        ("a scenario without a record", records[1:], 0),
    ]:
        caught = record_problems(broken, status)
        if not caught:
            raise SystemExit(f"self-test: {what} passed the checks")
        print(f"caught: {what}: {caught[0]}")


def render(path, seconds, status):
    records = []
    if os.path.exists(path):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise SystemExit(f"{path}: no fault records; did the suite run?")
    found = record_problems(records, status)
    if found:
        raise SystemExit(f"{path}: " + "; ".join(found))
    order = list(SCENARIOS)
    records.sort(key=lambda r: (order.index(r["scenario"]), r["injection"]))
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
        "`outbox-runtime/tests/sqs`)."
    )
    if status != 0:
        out.append("")
        out.append(
            f"**The suite failed (exit status {status})**: a test failed besides or beyond the "
            "counts above; `scripts/reliability`'s output says which."
        )
    out.append("")
    out.append(holes_markdown())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpus = os.cpu_count()
    out.append(
        f"Generated by `scripts/reliability` at commit {commit()} on {stamp}, in {seconds} s, "
        f"on {platform.system()} "
        f"{platform.machine()} with {cpus} CPUs. `scripts/fault-tests.filter` selects the tests: "
        "every test in a module named `faults` (in `outbox-runtime/tests/pipeline`, "
        "`outbox-runtime/tests/sqs`, `outbox-runtime/tests/envelope.rs` and "
        "`sample-app/tests/admin.rs`), the test binaries `sample-app/tests/faults.rs`, "
        "`outbox-runtime/tests/envelope_fuzz.rs` and `outbox-runtime/tests/history`, and the two "
        "unit tests of the runtime it names."
    )
    print("\n".join(out))


def main(argv):
    if argv[1:] == ["--check"]:
        check()
    elif argv[1:] == ["--self-test"]:
        self_test()
    elif len(argv) == 4:
        render(argv[1], int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
