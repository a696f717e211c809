//! `sample-app status`: the outbox's counts and the groups waiting longest,
//! as text or JSON.

use std::time::Duration;

use crate::db::AppDb;

/// How many groups the listing shows.
const GROUPS: u32 = 20;

/// Prints the status of the outbox in `store`.
pub(crate) async fn show<S: AppDb>(store: &S, json: bool) -> anyhow::Result<()> {
    store.migrate().await?;
    let stats = store.stats().await?;
    let groups = store.group_stats(GROUPS).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "outbox": stats, "groups": groups })
        );
        return Ok(());
    }
    println!(
        "undelivered: {}   oldest: {}   published: {}   dead rows: {}   dead letters: {}",
        stats.pending,
        age(stats.oldest_pending_age),
        stats.published,
        stats.dead,
        stats.dead_letters
    );
    if !groups.is_empty() {
        println!(
            "\n{:<32} {:>11} {:>10} {:>5}",
            "group", "undelivered", "oldest", "dead"
        );
        for g in &groups {
            println!(
                "{:<32} {:>11} {:>10} {:>5}",
                g.group,
                g.pending,
                age(g.oldest_pending_age),
                g.dead
            );
        }
    }
    Ok(())
}

/// An age in seconds, or `-` for none.
fn age(age: Option<Duration>) -> String {
    age.map_or_else(|| "-".to_owned(), |a| format!("{:.1}s", a.as_secs_f64()))
}
