//! The operator's commands: `outbox` (rows, requeue and purge of rows the
//! relay gave up on) and `dead-letters` (list, show, replay, purge of
//! messages a consumer gave up on; import of what the SQS queue gave up on). The actions are the runtime's
//! ([`outbox_runtime::admin`]); this module parses and prints. Every listing
//! prints a table for people or, with `--json`, one JSON document for scripts.

use clap::Subcommand;
use outbox_runtime::admin::{self, AdminError};
use outbox_runtime::{
    dispatch::DispatchTable,
    store::{AdminStore, RowStatus, StoredDeadLetter},
};

/// `sample-app outbox ...`
#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// The newest outbox rows, without payloads.
    Rows {
        /// Only rows with this status: pending, relayed, published or dead.
        #[arg(long)]
        status: Option<RowStatus>,
        /// How many rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put rows the relay gave up on (status `dead`) back to pending, with
    /// their attempts reset; they keep their id and place in their group.
    Requeue {
        /// The rows' `seq`.
        #[arg(required = true)]
        seqs: Vec<i64>,
    },
    /// Delete rows the relay gave up on, for good.
    Purge {
        /// The rows' `seq`.
        #[arg(required = true)]
        seqs: Vec<i64>,
    },
}

/// `sample-app dead-letters ...`
#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// The newest dead letters.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full, with its body.
    Show {
        /// Its id.
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue dead letters again as new messages for the handler that gave
    /// up (after the fix is deployed), deleting them.
    Replay {
        /// Their ids.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// Their ids.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// The groups held by a handler declared `on_dead_letter = "hold_group"`
    /// that gave up on one of their messages.
    Held {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Release a held group: replay, for its handler and in order, the
    /// message it gave up on (unless `--skip`) and those kept behind it.
    Release {
        /// The holding handler.
        handler: String,
        /// The group.
        group: String,
        /// Drop the message the handler gave up on instead of replaying it.
        #[arg(long)]
        skip: bool,
    },
    /// Move what the SQS queue gave up on (its dead-letter queue: the stack
    /// output `DeadLetterQueueUrl`) into the dead letters, to replay from
    /// there.
    Import {
        /// The dead-letter queue's URL.
        #[arg(long, env = "OUTBOX_DLQ_URL")]
        queue_url: String,
    },
}

/// Runs an `outbox` command.
pub(crate) async fn outbox<S: AdminStore>(store: &S, command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Rows {
            status,
            limit,
            json,
        } => {
            let rows = store.rows(status, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:>8}  {:<9}  {:<24}  {:>3}  {:<20}  {:>8}  last error",
                "seq", "status", "type", "v", "group", "attempts"
            );
            for row in &rows {
                println!(
                    "{:>8}  {:<9}  {:<24}  {:>3}  {:<20}  {:>8}  {}",
                    row.seq,
                    row.status,
                    clip(&row.message_type, 24),
                    row.version,
                    clip(&row.group, 20),
                    row.attempts,
                    row.last_error.as_deref().map_or("-", |e| clip(e, 60)),
                );
            }
            Ok(())
        }
        OutboxCommand::Requeue { seqs } => {
            each(&seqs, "requeued row", |seq| {
                admin::requeue_dead_row(store, seq)
            })
            .await
        }
        OutboxCommand::Purge { seqs } => {
            each(&seqs, "purged row", |seq| admin::purge_dead_row(store, seq)).await
        }
    }
}

/// Runs a `dead-letters` command.
pub(crate) async fn dead_letters<S: AdminStore>(
    store: &S,
    table: &DispatchTable,
    command: DeadLetterCommand,
) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { limit, json } => {
            let letters = store.dead_letters(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            println!(
                "{:>6}  {:<24}  {:<20}  {:<32}  {:>8}  error",
                "id", "type", "group", "handler", "attempts"
            );
            for l in &letters {
                println!(
                    "{:>6}  {:<24}  {:<20}  {:<32}  {:>8}  {}",
                    l.id,
                    clip(l.letter.message_type.as_deref().unwrap_or("?"), 24),
                    clip(l.letter.group.as_deref().unwrap_or("?"), 20),
                    clip(l.letter.handler.as_deref().unwrap_or("(poison: all)"), 32),
                    l.letter.attempts,
                    clip(&l.letter.error, 60),
                );
            }
            Ok(())
        }
        DeadLetterCommand::Show { id, json } => {
            let letter = store
                .dead_letter_by_id(id)
                .await?
                .ok_or(AdminError::NoSuchDeadLetter(id))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letter)?);
            } else {
                show(&letter);
            }
            Ok(())
        }
        DeadLetterCommand::Replay { ids, all } => {
            let ids = ids_or_all(store, ids, all).await?;
            let mut failed = 0;
            for id in ids {
                match admin::replay_dead_letter(store, table, id).await {
                    Ok(replayed) => println!(
                        "replayed dead letter {id} as message {} (for {})",
                        replayed.replay_id,
                        replayed.handler.as_deref().unwrap_or("every handler")
                    ),
                    Err(err) => {
                        eprintln!("error: {err}");
                        failed += 1;
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{failed} dead letter(s) not replayed");
            Ok(())
        }
        DeadLetterCommand::Purge { ids, all } => {
            let ids = ids_or_all(store, ids, all).await?;
            each(&ids, "purged dead letter", |id| {
                admin::purge_dead_letter(store, id)
            })
            .await
        }
        DeadLetterCommand::Held { json } => {
            let held = store.held_groups(u32::MAX).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&held)?);
                return Ok(());
            }
            println!(
                "{:<32}  {:<20}  {:<24}  {:>12}  release",
                "handler", "group", "held since", "dead letters"
            );
            for h in &held {
                let release = match h.hold.release {
                    Some(release) => format!("running, until message {}", release.last),
                    None => "-".to_owned(),
                };
                println!(
                    "{:<32}  {:<20}  {:<24}  {:>12}  {release}",
                    clip(&h.hold.handler, 32),
                    clip(&h.hold.group, 20),
                    h.hold
                        .held_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    h.dead_letters,
                );
            }
            Ok(())
        }
        DeadLetterCommand::Release {
            handler,
            group,
            skip,
        } => {
            let resume = if skip {
                admin::Resume::Skip
            } else {
                admin::Resume::Replay
            };
            let released = admin::release_group(store, table, &handler, &group, resume).await?;
            if let Some(id) = released.skipped {
                println!("skipped dead letter {id}");
            }
            for r in &released.replays {
                println!(
                    "replayed dead letter {} as message {}",
                    r.dead_letter, r.replay_id
                );
            }
            println!(
                "group {group} released for {handler}: {} message(s) run again in order",
                released.replays.len()
            );
            Ok(())
        }
        DeadLetterCommand::Import { queue_url } => {
            let sqs = aws_sdk_sqs::Client::new(&outbox_runtime::aws::sdk_config().await);
            let dlq = outbox_runtime::transport::sqs::SqsReceiver::new(sqs, queue_url);
            let moved = admin::import_dead_letter_queue(store, &dlq).await?;
            println!("imported {moved} message(s) from the queue's dead-letter queue");
            Ok(())
        }
    }
}

/// Runs `action` on every id, reporting each; fails if any failed.
async fn each<F, Fut>(ids: &[i64], done: &str, action: F) -> anyhow::Result<()>
where
    F: Fn(i64) -> Fut,
    Fut: Future<Output = Result<(), AdminError>>,
{
    let mut failed = 0;
    for &id in ids {
        match action(id).await {
            Ok(()) => println!("{done} {id}"),
            Err(err) => {
                eprintln!("error: {err}");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} failed", ids.len());
    Ok(())
}

async fn ids_or_all<S: AdminStore>(
    store: &S,
    ids: Vec<i64>,
    all: bool,
) -> anyhow::Result<Vec<i64>> {
    if !all {
        return Ok(ids);
    }
    // Collected first, oldest first: replaying or purging shrinks the table.
    let mut all_ids: Vec<i64> = store
        .dead_letters(u32::MAX)
        .await?
        .iter()
        .map(|l| l.id)
        .collect();
    all_ids.sort_unstable();
    Ok(all_ids)
}

fn show(l: &StoredDeadLetter) {
    let or_unknown = |v: Option<&str>| v.unwrap_or("-").to_owned();
    println!("dead letter   {}", l.id);
    println!(
        "message       {}",
        l.letter
            .message_id
            .map_or_else(|| "-".to_owned(), |id| id.to_string())
    );
    println!(
        "type          {}",
        or_unknown(l.letter.message_type.as_deref())
    );
    println!("group         {}", or_unknown(l.letter.group.as_deref()));
    println!(
        "handler       {}",
        l.letter
            .handler
            .as_deref()
            .unwrap_or("(none: the message is poison)")
    );
    println!("attempts      {}", l.letter.attempts);
    println!("dead at       {}", l.dead_at.to_rfc3339());
    println!("error         {}", l.letter.error);
    println!("body          {}", l.letter.body);
}

/// At most `max` characters of `s`, on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}
