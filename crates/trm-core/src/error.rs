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
