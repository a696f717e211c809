//! The app's handlers under `outbox_runtime::testing`, as a user would test
//! them: the real relay, queue and consumer, no sleeps.

use external_app::Journal;
use external_app::messages::{OrderPlaced, Payment};
use outbox_runtime::Dispatcher;
use outbox_runtime::testing::TestHarness;

async fn harness() -> TestHarness {
    let dispatcher = Dispatcher::from_registry()
        .expect("table")
        .with_state(Journal::default());
    TestHarness::start_with(dispatcher).await.expect("harness")
}

fn placed(order: u64) -> OrderPlaced {
    OrderPlaced {
        order,
        customer: "c-1".into(),
    }
}

#[tokio::test]
async fn an_order_cascades_into_a_payment_that_the_ledger_records() {
    let harness = harness().await;
    harness.send(&placed(1)).await.expect("sent");

    let settled = harness.settle().await.expect("settled");
    let payments = settled.handled::<Payment>();
    assert!(
        matches!(payments.as_slice(), [Payment::Captured { account, cents: 1_000 }] if account == "c-1"),
        "{payments:?}"
    );
    assert_eq!(settled.handled_by("shipping.reserve").len(), 1);
    assert_eq!(
        settled
            .handled_by("external_app::handlers::ledger::record")
            .len(),
        1
    );
    assert!(settled.dead_letters().is_empty());
    harness.shutdown().await;
}

#[tokio::test]
async fn a_reservation_failing_every_attempt_is_dead_lettered_and_billing_goes_on() {
    let harness = harness().await;
    // shipping.reserve has max_attempts = 3.
    harness
        .faults()
        .fail_handler_first_attempts("shipping.reserve", 3);
    harness.send(&placed(2)).await.expect("sent");

    let settled = harness.settle().await.expect("settled");
    let dead: Vec<u64> = settled
        .dead_lettered::<OrderPlaced>()
        .iter()
        .map(|m| m.order)
        .collect();
    assert_eq!(dead, [2]);
    let letter = &settled.dead_letters()[0].letter;
    assert_eq!(letter.handler.as_deref(), Some("shipping.reserve"));
    assert_eq!(letter.attempts, 3);
    // The other handler of the order, and the cascade, are unaffected.
    assert_eq!(
        settled
            .handled_by("external_app::handlers::billing::charge")
            .len(),
        1
    );
    assert_eq!(settled.handled::<Payment>().len(), 1);
    harness.shutdown().await;
}
