use external_app::Journal;
use external_app::messages::{OrderPlaced, Payment};
use outbox_runtime::{Dispatcher, Envelope};

#[tokio::test]
async fn envelopes_reach_the_right_handlers() {
    let dispatcher = Dispatcher::from_registry()
        .expect("table")
        .with_state(Journal::default());
    let names: Vec<_> = dispatcher
        .table()
        .entries()
        .iter()
        .map(|m| {
            (
                m.registration().name,
                m.handlers().iter().map(|h| h.name).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            (
                "shop.order_placed",
                vec![
                    "external_app::handlers::billing::charge",
                    "shipping.reserve"
                ]
            ),
            (
                "shop.payment",
                vec!["external_app::handlers::ledger::record"]
            ),
        ]
    );

    // One message, two handlers; the cascade it publishes goes to the third.
    let placed = Envelope::from_message(&OrderPlaced {
        order: 1,
        customer: "ann".into(),
    })
    .unwrap();
    let report = dispatcher.dispatch(&placed).await.unwrap();
    assert!(report.succeeded());
    let payment = report
        .published()
        .next()
        .expect("billing publishes a payment")
        .envelope
        .clone();
    assert_eq!(
        (
            payment.message_type.as_str(),
            payment.version,
            payment.group.as_str()
        ),
        ("shop.payment", 2, "ann")
    );

    // Through the wire format, as a consumer receives it.
    let received = Envelope::from_json(&payment.to_json()).unwrap();
    dispatcher.dispatch(&received).await.unwrap();
    let refund = Envelope::from_message(&Payment::Refunded {
        account: "bob".into(),
        cents: 5,
    })
    .unwrap();
    dispatcher.dispatch(&refund).await.unwrap();

    let journal = dispatcher.state().get::<Journal>().unwrap().entries();
    assert_eq!(
        journal,
        [
            "billing.charge 1",
            "shipping.reserve 1",
            "ledger +1000 ann",
            "ledger -5 bob"
        ]
    );
}
