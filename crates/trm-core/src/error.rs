//! Errors of the domain: a bad field (the caller's input) and a refused guard.

use std::fmt;

/// A field of the input that is missing or malformed. The message names the field and what
/// is expected, never the value (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Dotted path of the field, as named in the proto contract.
    pub field: String,
    /// What is wrong, without the value.
    pub problem: String,
}

impl FieldError {
    /// Returns an error for `field` with the given problem.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Prefixes the field path with `parent`, for errors found inside a nested message.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// The guards a request can be refused on; their names appear in FAILED_PRECONDITION
/// messages so that clients can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Consent,
    ReflectionPeriod,
    NonRefoulement,
    Risk,
    BestInterests,
    Guardian,
    Decision,
    State,
    SafetyAlert,
}

impl Guard {
    /// Returns the guard's name as used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::Consent => "consent",
            Guard::ReflectionPeriod => "reflection_period",
            Guard::NonRefoulement => "non_refoulement",
            Guard::Risk => "risk",
            Guard::BestInterests => "best_interests",
            Guard::Guardian => "guardian",
            Guard::Decision => "decision",
            Guard::State => "state",
            Guard::SafetyAlert => "safety_alert",
        }
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guard that refused a request, with a reason free of personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{guard}: {reason}")]
pub struct GuardError {
    pub guard: Guard,
    pub reason: String,
}

impl GuardError {
    /// Returns a refusal by `guard`.
    pub fn new(guard: Guard, reason: impl Into<String>) -> Self {
        Self {
            guard,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients tell refusals apart by these names in FAILED_PRECONDITION messages.
    #[test]
    fn guard_names_are_the_ones_refusals_carry() {
        let names = [
            (Guard::Consent, "consent"),
            (Guard::ReflectionPeriod, "reflection_period"),
            (Guard::NonRefoulement, "non_refoulement"),
            (Guard::Risk, "risk"),
            (Guard::BestInterests, "best_interests"),
            (Guard::Guardian, "guardian"),
            (Guard::Decision, "decision"),
            (Guard::State, "state"),
        ];
        for (guard, name) in names {
            assert_eq!(guard.as_str(), name);
            assert_eq!(guard.to_string(), name);
        }
        assert_eq!(
            GuardError::new(Guard::ReflectionPeriod, "ends on day 30").to_string(),
            "reflection_period: ends on day 30"
        );
    }

    #[test]
    fn a_field_error_names_the_field_with_its_parents() {
        let err = FieldError::new("case_id", "is required").within("referral");
        assert_eq!(err.field, "referral.case_id");
        assert_eq!(err.to_string(), "referral.case_id: is required");
    }
}
