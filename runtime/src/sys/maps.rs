//! Reading `/proc/self/maps`.

use std::path::Path;

/// Whether any mapping of this process is backed by `path`.
///
/// The kernel prints the path as it was opened, with " (deleted)" appended
/// when the file was removed since; both count as mapped.
pub fn is_mapped(path: &Path) -> std::io::Result<bool> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let needle = path.to_string_lossy();
    Ok(maps.lines().any(|line| {
        // Fields: address perms offset dev inode pathname; pathname is the
        // rest of the line after the fifth field and may contain spaces.
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_start();
            match rest.find(' ') {
                Some(i) => rest = &rest[i..],
                None => return false,
            }
        }
        let name = rest.trim_start();
        let name = name.strip_suffix(" (deleted)").unwrap_or(name);
        name == needle
    }))
}
