//! [`Status`]: the typed form of `molt_status`.

use crate::ffi::*;

/// A status code of the ABI, as an explicit, append-only enum.
///
/// Values never change and are never reused; new codes are appended in later
/// minors, so code matching on it keeps a wildcard arm.
#[repr(i32)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `MOLT_OK`.
    Ok = MOLT_OK,
    /// `MOLT_ERR_FAILED`.
    Failed = MOLT_ERR_FAILED,
    /// `MOLT_ERR_INVALID_ARG`.
    InvalidArg = MOLT_ERR_INVALID_ARG,
    /// `MOLT_ERR_STALE`.
    Stale = MOLT_ERR_STALE,
    /// `MOLT_ERR_NOT_FOUND`.
    NotFound = MOLT_ERR_NOT_FOUND,
    /// `MOLT_ERR_NO_MEMORY`.
    NoMemory = MOLT_ERR_NO_MEMORY,
    /// `MOLT_ERR_LIMIT`.
    Limit = MOLT_ERR_LIMIT,
    /// `MOLT_ERR_UNSUPPORTED`.
    Unsupported = MOLT_ERR_UNSUPPORTED,
    /// `MOLT_ERR_PANIC`.
    Panic = MOLT_ERR_PANIC,
    /// `MOLT_ERR_INSTANCE_FAILED`.
    InstanceFailed = MOLT_ERR_INSTANCE_FAILED,
    /// `MOLT_ERR_SCHEMA`.
    Schema = MOLT_ERR_SCHEMA,
    /// `MOLT_ERR_SHUTDOWN`.
    Shutdown = MOLT_ERR_SHUTDOWN,
    /// `MOLT_ERR_VERSION`.
    Version = MOLT_ERR_VERSION,
    /// `MOLT_ERR_PHASE`.
    Phase = MOLT_ERR_PHASE,
    /// `MOLT_ERR_THREAD` (1.2).
    Thread = MOLT_ERR_THREAD,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: &'static [Status] = &[
        Status::Ok,
        Status::Failed,
        Status::InvalidArg,
        Status::Stale,
        Status::NotFound,
        Status::NoMemory,
        Status::Limit,
        Status::Unsupported,
        Status::Panic,
        Status::InstanceFailed,
        Status::Schema,
        Status::Shutdown,
        Status::Version,
        Status::Phase,
        Status::Thread,
    ];

    /// The typed status for a raw code; `None` for a code this minor does not
    /// know (a newer peer may send one: treat it as a failure).
    pub fn from_raw(raw: molt_status) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as i32 == raw)
    }

    /// The raw code.
    pub const fn raw(self) -> molt_status {
        self as i32
    }

    /// The C name, e.g. `MOLT_ERR_STALE`.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "MOLT_OK",
            Status::Failed => "MOLT_ERR_FAILED",
            Status::InvalidArg => "MOLT_ERR_INVALID_ARG",
            Status::Stale => "MOLT_ERR_STALE",
            Status::NotFound => "MOLT_ERR_NOT_FOUND",
            Status::NoMemory => "MOLT_ERR_NO_MEMORY",
            Status::Limit => "MOLT_ERR_LIMIT",
            Status::Unsupported => "MOLT_ERR_UNSUPPORTED",
            Status::Panic => "MOLT_ERR_PANIC",
            Status::InstanceFailed => "MOLT_ERR_INSTANCE_FAILED",
            Status::Schema => "MOLT_ERR_SCHEMA",
            Status::Shutdown => "MOLT_ERR_SHUTDOWN",
            Status::Version => "MOLT_ERR_VERSION",
            Status::Phase => "MOLT_ERR_PHASE",
            Status::Thread => "MOLT_ERR_THREAD",
        }
    }

    /// A name for any raw code, known or not.
    pub fn describe(raw: molt_status) -> String {
        match Status::from_raw(raw) {
            Some(s) => format!("{} ({raw})", s.name()),
            None => format!("unknown status {raw}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_and_is_named_like_its_constant() {
        for s in Status::ALL {
            assert_eq!(Status::from_raw(s.raw()), Some(*s));
            let c = crate::ffi::CONSTANTS
                .iter()
                .find(|c| c.name == s.name())
                .unwrap_or_else(|| panic!("{} has no constant", s.name()));
            assert_eq!(c.value, s.raw() as i128);
        }
        assert_eq!(Status::from_raw(-1000), None);
    }
}
