use outbox_runtime::OutboxMessage;

#[derive(OutboxMessage)]
struct OrderPlaced {
    order_id: i64,
}

fn main() {}
