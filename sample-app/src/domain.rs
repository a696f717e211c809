//! The orders domain: statuses and the transitions between them.

use std::fmt;

/// An order's lifecycle.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OrderStatus {
    /// Created, not yet submitted.
    Created,
    /// Submitted by the customer.
    Submitted,
}

impl OrderStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::Submitted => "submitted",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "created" => Some(OrderStatus::Created),
            "submitted" => Some(OrderStatus::Submitted),
            _ => None,
        }
    }

    /// The status after submitting, or why an order in this status cannot be submitted.
    pub(crate) fn submit(self) -> Result<OrderStatus, DomainError> {
        match self {
            OrderStatus::Created => Ok(OrderStatus::Submitted),
            OrderStatus::Submitted => Err(DomainError::InvalidTransition {
                from: self,
                to: OrderStatus::Submitted,
            }),
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A customer's id: 1 to 64 ASCII letters, digits, `-`, `_` or `.`. It is
/// the message group of the customer's order events, so it must also be a
/// valid SQS message group; this rule is stricter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CustomerId(String);

impl CustomerId {
    /// The longest id accepted.
    pub(crate) const MAX_LEN: usize = 64;

    pub(crate) fn parse(value: &str) -> Result<Self, DomainError> {
        let valid = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            Ok(CustomerId(value.to_owned()))
        } else {
            Err(DomainError::InvalidCustomerId(
                value.chars().take(80).collect(),
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The sample's customer `n`: `customer-N`.
    pub(crate) fn numbered(n: usize) -> Self {
        CustomerId(format!("customer-{n}"))
    }
}

/// A domain rule was broken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DomainError {
    /// The order cannot move from one status to the other.
    #[error("an order that is {from} cannot become {to}")]
    InvalidTransition {
        /// Its status.
        from: OrderStatus,
        /// The status asked for.
        to: OrderStatus,
    },
    /// A customer id breaks the rule of [`CustomerId`].
    #[error("customer id {0:?} is invalid: use 1 to 64 ASCII letters, digits, `-`, `_` or `.`")]
    InvalidCustomerId(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_created_orders_can_be_submitted() {
        assert_eq!(OrderStatus::Created.submit(), Ok(OrderStatus::Submitted));
        let err = OrderStatus::Submitted.submit().unwrap_err();
        assert_eq!(
            err.to_string(),
            "an order that is submitted cannot become submitted"
        );
        assert_eq!(OrderStatus::parse("created"), Some(OrderStatus::Created));
        assert_eq!(OrderStatus::parse("shipped"), None);
    }

    #[test]
    fn customer_ids_are_short_plain_ascii() {
        assert_eq!(CustomerId::parse("c-1.a_B").unwrap().as_str(), "c-1.a_B");
        for bad in ["", "with space", "é", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    CustomerId::parse(bad),
                    Err(DomainError::InvalidCustomerId(_))
                ),
                "{bad:?}"
            );
        }
        assert!(CustomerId::parse(&"x".repeat(64)).is_ok());
    }
}
