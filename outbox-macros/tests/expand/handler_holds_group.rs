#[handler(name = "ledger.post", max_attempts = 3, publishes = [EntryPosted], on_dead_letter = "hold_group")]
async fn post(msg: EntryPosted, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let _ = (msg, ctx);
    Ok(())
}
