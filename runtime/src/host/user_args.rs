//! User-arg slots reserved by name: one index per name, for the process's life.

use molt_abi::ffi::{MOLT_ERR_INVALID_ARG, MOLT_ERR_LIMIT, molt_status};

use crate::sync::Mutex;

/// How many user-arg slots exist (and so how many per-continuation values).
pub const USER_ARGS_MAX: usize = 32;

/// The table of reserved names. Reloads reserve the same names again and
/// get the same indices, so no slot leaks across reloads.
#[derive(Debug, Default)]
pub struct UserArgs {
    names: Mutex<Vec<String>>,
}

impl UserArgs {
    /// The index of `name`, reserving it if new.
    pub fn reserve(&self, name: &str) -> Result<u32, (molt_status, String)> {
        if name.is_empty() || name.len() > 128 {
            return Err((MOLT_ERR_INVALID_ARG, format!("user-arg name {name:?} must be 1 to 128 bytes")));
        }
        let mut names = self.names.lock();
        if let Some(i) = names.iter().position(|n| n == name) {
            return Ok(i as u32);
        }
        if names.len() >= USER_ARGS_MAX {
            return Err((
                MOLT_ERR_LIMIT,
                format!(
                    "user-arg table full: all {USER_ARGS_MAX} slots are reserved ({}); cannot reserve {name:?}",
                    names.join(", ")
                ),
            ));
        }
        names.push(name.to_owned());
        Ok((names.len() - 1) as u32)
    }

    /// The reserved names, by index.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_index_and_a_full_table_names_its_limit() {
        let t = UserArgs::default();
        assert_eq!(t.reserve("a").unwrap(), 0);
        assert_eq!(t.reserve("b").unwrap(), 1);
        assert_eq!(t.reserve("a").unwrap(), 0);
        for i in 2..USER_ARGS_MAX {
            t.reserve(&format!("n{i}")).unwrap();
        }
        let (status, msg) = t.reserve("one-too-many").unwrap_err();
        assert_eq!(status, MOLT_ERR_LIMIT);
        assert!(msg.contains("table full") && msg.contains("one-too-many"), "{msg}");
        assert_eq!(t.reserve("b").unwrap(), 1, "existing names still resolve when full");
    }
}
