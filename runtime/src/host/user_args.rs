//! User-arg slots reserved by name: one index per name, for the process's life.

use molt_abi::ffi::{MOLT_ERR_INVALID_ARG, MOLT_ERR_LIMIT, molt_status};

use crate::sync::Mutex;

/// How many user-arg slots exist (and so how many per-continuation values).
pub const USER_ARGS_MAX: usize = 32;

/// The table of reserved names. Reloads reserve the same names again and
/// get the same indices, so no slot leaks across reloads.
#[derive(Debug, Default)]
pub struct UserArgs {
    /// Names by index, with the version that first reserved each.
    names: Mutex<Vec<(String, crate::cont::VersionId)>>,
}

impl UserArgs {
    /// The index of `name`, reserving it for version `by` if new.
    pub fn reserve(&self, name: &str, by: crate::cont::VersionId) -> Result<u32, (molt_status, String)> {
        if name.is_empty() || name.len() > 128 {
            return Err((MOLT_ERR_INVALID_ARG, format!("user-arg name {name:?} must be 1 to 128 bytes")));
        }
        let mut names = self.names.lock();
        if let Some(i) = names.iter().position(|(n, _)| n == name) {
            return Ok(i as u32);
        }
        if names.len() >= USER_ARGS_MAX {
            return Err((
                MOLT_ERR_LIMIT,
                format!(
                    "user-arg table full: all {USER_ARGS_MAX} slots are reserved ({}); cannot reserve {name:?}",
                    names.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        names.push((name.to_owned(), by));
        Ok((names.len() - 1) as u32)
    }

    /// The reserved names, by index.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().iter().map(|(n, _)| n.clone()).collect()
    }

    /// Forget the newest reservations made by versions `gone` says are gone
    /// (a refused reload's candidates). Only from the end of the table, so
    /// that no other name's index moves.
    pub(crate) fn forget_newest(&self, gone: impl Fn(crate::cont::VersionId) -> bool) -> Vec<String> {
        let mut names = self.names.lock();
        let mut out = Vec::new();
        while names.last().is_some_and(|(_, by)| gone(*by)) {
            out.extend(names.pop().map(|(n, _)| n));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_index_and_a_full_table_names_its_limit() {
        let t = UserArgs::default();
        let v = crate::cont::VersionId(1);
        assert_eq!(t.reserve("a", v).unwrap(), 0);
        assert_eq!(t.reserve("b", v).unwrap(), 1);
        assert_eq!(t.reserve("a", v).unwrap(), 0);
        for i in 2..USER_ARGS_MAX {
            t.reserve(&format!("n{i}"), v).unwrap();
        }
        let (status, msg) = t.reserve("one-too-many", v).unwrap_err();
        assert_eq!(status, MOLT_ERR_LIMIT);
        assert!(msg.contains("table full") && msg.contains("one-too-many"), "{msg}");
        assert_eq!(t.reserve("b", v).unwrap(), 1, "existing names still resolve when full");
        let refused = crate::cont::VersionId(2);
        let t = UserArgs::default();
        t.reserve("kept", v).unwrap();
        t.reserve("new", refused).unwrap();
        assert_eq!(t.forget_newest(|id| id == refused), ["new"]);
        assert_eq!(t.names(), ["kept"]);
    }
}
