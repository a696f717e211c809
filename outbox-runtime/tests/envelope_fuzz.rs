//! Envelope decoding on hostile input, by property: whatever bytes arrive in
//! an SQS body, `Envelope::from_json` returns a typed error or a valid
//! envelope, and never panics; a valid envelope survives the wire unchanged;
//! any single-byte mutation of one is still handled without a panic. The
//! seeds are random per run; a failure prints the shrunk input.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use outbox_runtime::{
    Envelope,
    envelope::{EnvelopeError, Headers},
};
use proptest::prelude::*;

use crate::support::fault_report;

const CASES: u32 = 2_000;
static TRIED: AtomicU64 = AtomicU64::new(0);

/// Decodes, and checks what a decoded envelope promises.
fn decode(input: &str) {
    TRIED.fetch_add(1, Ordering::Relaxed);
    match Envelope::from_json(input) {
        Ok(envelope) => {
            envelope.validate().expect("a decoded envelope is valid");
            let again = Envelope::from_json(&envelope.to_json()).expect("re-decodes");
            assert_eq!(again.to_json(), envelope.to_json());
        }
        Err(EnvelopeError::Malformed { path, .. }) => assert!(!path.is_empty()),
        Err(EnvelopeError::Invalid { field, reason }) => {
            assert!(!field.is_empty() && !reason.is_empty())
        }
        Err(other) => assert!(!other.to_string().is_empty()),
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u128>(),
        "[a-z][a-z._]{0,30}",
        1..u32::MAX,
        "[!-~]{1,128}",
        json_value(),
        0_i64..4_102_444_800_000,
        prop::collection::btree_map("[a-z-]{1,10}", ".{0,10}", 0..3),
    )
        .prop_map(
            |(id, name, version, group, payload, millis, extra)| Envelope {
                id: uuid::Uuid::from_u128(id),
                message_type: name,
                version,
                group,
                payload: serde_json::value::to_raw_value(&payload).expect("JSON"),
                created_at: chrono::DateTime::from_timestamp_millis(millis).expect("in range"),
                headers: Headers {
                    extra,
                    ..Headers::default()
                },
            },
        )
}

/// Runs `test` on `CASES` inputs from `strategy`; panics with the shrunk
/// failing input.
fn check<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(err) = runner.run(&strategy, test) {
        panic!("{name}: {err}");
    }
}

#[test]
fn hostile_input_decodes_or_is_a_typed_error_and_valid_envelopes_survive_the_wire() {
    check("any text", ".{0,300}", |input: String| {
        decode(&input);
        Ok(())
    });
    check("any JSON", json_value(), |input| {
        decode(&input.to_string());
        Ok(())
    });
    check("valid envelopes", envelope(), |envelope| {
        let wire = envelope.to_json();
        let back = Envelope::from_json(&wire).expect("a valid envelope decodes");
        TRIED.fetch_add(1, Ordering::Relaxed);
        prop_assert_eq!(back.id, envelope.id);
        prop_assert_eq!(&back.message_type, &envelope.message_type);
        prop_assert_eq!(back.version, envelope.version);
        prop_assert_eq!(&back.group, &envelope.group);
        prop_assert_eq!(back.payload.get(), envelope.payload.get());
        prop_assert_eq!(back.created_at, envelope.created_at);
        prop_assert_eq!(&back.headers, &envelope.headers);
        Ok(())
    });
    check(
        "mutated envelopes",
        (
            envelope(),
            any::<prop::sample::Index>(),
            any::<u8>(),
            0..3_u8,
        ),
        |(envelope, at, byte, how)| {
            let mut bytes = envelope.to_json().into_bytes();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
            // SQS bodies are UTF-8; the lossy conversion keeps the damage.
            decode(&String::from_utf8_lossy(&bytes));
            Ok(())
        },
    );

    let tried = TRIED.load(Ordering::Relaxed);
    assert!(tried >= u64::from(4 * CASES));
    fault_report::report(&fault_report::FaultRecord {
        scenario: "malformed envelopes",
        injection: "random text, random JSON, valid envelopes and byte mutations of them (proptest); handled = a typed error or a valid envelope, no panic",
        runs: tried,
        sent: tried,
        handled: tried,
        lost: 0,
        duplicate_effects: 0,
        duplicates_suppressed: None,
        order_violations: None,
        stuck_groups: None,
        attempt_mismatches: None,
        early_runs: None,
        harness_problems: None,
    });
}
