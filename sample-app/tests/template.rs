//! The deploy template and the runtime agree on what a pump is: the body the
//! schedule sends (with its time filled in) is one the consumer takes for a
//! pump, in the pump's message group. The rest of the template is checked by
//! `sam validate --lint`, cfn-lint and scripts/check-template.py (see
//! scripts/test).

#[test]
fn the_scheduled_pump_is_a_pump_to_the_consumer() {
    let template = include_str!("../template.yaml");
    let value_of = |key: &str| -> &str {
        let line = template
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("template.yaml has no `{key}`"));
        line[key.len()..].trim().trim_matches('\'')
    };
    let body = value_of("InputTemplate:").replace("<time>", "2026-11-28T09:00:00Z");
    assert!(
        outbox_runtime::pump::is_pump(&body),
        "the consumer would dispatch the scheduled pump as a message: {body}"
    );
    assert_eq!(
        value_of("MessageGroupId:"),
        outbox_runtime::pump::PUMP_GROUP
    );
}
