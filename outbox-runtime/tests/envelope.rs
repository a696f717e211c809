//! The envelope's wire format: building, parsing untrusted input, and the
//! checked-in JSON Schema.

use outbox_runtime::{Envelope, OutboxMessage, envelope::EnvelopeError, message::EncodeError};

#[derive(
    Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage,
)]
#[outbox(name = "accounts.opened", version = 4, group = owner)]
struct AccountOpened {
    owner: String,
    tags: Vec<String>,
}

const VALID: &str = r#"{
    "id": "0193a5d2-7c1e-7b6a-9f0e-3f1c2d4b5a69",
    "type": "accounts.opened",
    "version": 4,
    "group": "alice",
    "payload": {"owner": "alice", "tags": ["a"]},
    "created_at": "2026-11-28T10:00:00Z",
    "headers": {"correlation_id": "0193a5d2-7c1e-7b6a-9f0e-3f1c2d4b5a69", "tenant": "t-1"}
}"#;

#[test]
fn from_message_fills_every_field() {
    let msg = AccountOpened {
        owner: "alice".into(),
        tags: vec!["vip".into()],
    };
    let envelope = Envelope::from_message(&msg).unwrap();
    assert_eq!(
        envelope.id.get_version_num(),
        7,
        "ids are time-ordered UUID v7"
    );
    assert_eq!(envelope.message_type, "accounts.opened");
    assert_eq!(envelope.version, 4);
    assert_eq!(envelope.group, "alice");
    assert_eq!(
        envelope.payload.get(),
        r#"{"owner":"alice","tags":["vip"]}"#
    );
    assert_eq!(envelope.headers.correlation_id, Some(envelope.id));
    assert_eq!(envelope.headers.causation_id, None);
    assert_eq!(AccountOpened::decode(&envelope.payload).unwrap(), msg);
}

#[test]
fn ids_are_ordered_by_creation() {
    let msg = AccountOpened {
        owner: "a".into(),
        tags: vec![],
    };
    let ids: Vec<_> = (0..1000)
        .map(|_| Envelope::from_message(&msg).unwrap().id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[test]
fn json_round_trips() {
    let envelope = Envelope::from_json(VALID).unwrap();
    assert_eq!(
        envelope.headers.extra.get("tenant").map(String::as_str),
        Some("t-1")
    );
    let again = Envelope::from_json(&envelope.to_json()).unwrap();
    assert_eq!(again.to_json(), envelope.to_json());
    assert_eq!(
        again.payload.get(),
        r#"{"owner": "alice", "tags": ["a"]}"#,
        "the payload is kept verbatim"
    );
}

/// In the fault suite (`scripts/fault-tests.filter` selects every test under
/// a module named `faults`).
mod faults {
    use super::*;

    #[test]
    fn a_group_that_sqs_would_reject_is_refused_before_anything_is_written() {
        for (owner, reason) in [
            ("", "must not be empty"),
            ("has space", "contains ' '"),
            ("ünïcode", "contains 'ü'"),
            (&"x".repeat(129), "is 129 bytes long, the limit is 128"),
            (
                outbox_runtime::pump::PUMP_GROUP,
                "starts with `__outbox`, which the toolkit reserves",
            ),
        ] {
            let err = Envelope::from_message(&AccountOpened {
                owner: owner.into(),
                tags: vec![],
            })
            .unwrap_err();
            let EncodeError::InvalidGroup {
                message,
                reason: got,
                ..
            } = &err
            else {
                panic!("{err:?}")
            };
            assert_eq!(*message, "accounts.opened");
            assert!(got.starts_with(reason), "{owner:?}: {got}");
        }
    }
}

fn malformed(json: &str) -> (String, String) {
    match Envelope::from_json(json) {
        Err(EnvelopeError::Malformed { path, source }) => (path, source.to_string()),
        other => panic!("expected a malformed error for {json}, got {other:?}"),
    }
}

#[test]
fn malformed_input_says_where_it_is_wrong() {
    let (path, _) = malformed("not json");
    assert_eq!(path, ".");
    let (path, why) = malformed("[1, 2]");
    assert_eq!(path, "[0]");
    assert!(
        why.starts_with("invalid type: integer `1`, expected a formatted UUID"),
        "{why}"
    );
    let (path, why) = malformed(&VALID.replace(r#""version": 4"#, r#""version": "4""#));
    assert_eq!(path, "version");
    assert!(
        why.starts_with("invalid type: string \"4\", expected u32"),
        "{why}"
    );
    let (path, _) = malformed(&VALID.replace(r#""version": 4"#, r#""version": -1"#));
    assert_eq!(path, "version");
    let (path, _) = malformed(&VALID.replace(
        "0193a5d2-7c1e-7b6a-9f0e-3f1c2d4b5a69\",\n    \"type",
        "nope\",\n    \"type",
    ));
    assert_eq!(path, "id");
    let (path, _) = malformed(&VALID.replace(r#""tenant": "t-1""#, r#""tenant": 5"#));
    assert_eq!(
        path, "headers",
        "serde reports flattened custom headers at their parent"
    );
    let (path, why) =
        malformed(&VALID.replace(r#""payload": {"owner": "alice", "tags": ["a"]},"#, ""));
    assert_eq!(path, ".");
    assert!(why.starts_with("missing field `payload`"), "{why}");
    let (path, why) = malformed(&format!("{VALID} trailing"));
    assert_eq!(path, ".");
    assert!(why.starts_with("trailing characters"), "{why}");
}

#[test]
fn well_formed_but_invalid_envelopes_are_rejected() {
    for (from, to, field) in [
        (r#""version": 4"#, r#""version": 0"#, "version"),
        (r#""type": "accounts.opened""#, r#""type": """#, "type"),
        (r#""group": "alice""#, r#""group": "a b""#, "group"),
    ] {
        match Envelope::from_json(&VALID.replace(from, to)) {
            Err(EnvelopeError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("expected {field} to be invalid, got {other:?}"),
        }
    }
}

#[test]
fn the_checked_in_schema_matches_the_code() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/envelope.schema.json"
    );
    let generated = serde_json::to_string_pretty(&Envelope::json_schema()).unwrap() + "\n";
    if std::env::var_os("OUTBOX_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "schemas/envelope.schema.json is out of date; rerun with OUTBOX_BLESS=1 and review the diff"
    );
}

#[test]
fn a_system_time_becomes_utc_and_saturates_instead_of_panicking() {
    use chrono::{DateTime, Utc};
    use outbox_runtime::envelope::NotBefore;
    use std::time::{Duration, UNIX_EPOCH};
    let second = UNIX_EPOCH + Duration::new(1, 500);
    assert_eq!(second.to_utc(), DateTime::from_timestamp(1, 500).unwrap());
    let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
    assert_eq!(far.to_utc(), DateTime::<Utc>::MAX_UTC);
    let before = UNIX_EPOCH - Duration::new(2, 250);
    assert_eq!(
        before.to_utc(),
        DateTime::from_timestamp(-2, 0).unwrap() - chrono::Duration::nanoseconds(250)
    );
}
