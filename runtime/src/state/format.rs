//! The state file's format, byte by byte (also in docs/state-format.md).
//!
//! Everything here works on byte slices with bounds checks and returns
//! errors, never panics: it is what a corrupt or hostile file meets first.
//!
//! ```text
//! 0        superblock (one 4 KiB page)
//! 4096     directory copy 0   (DIR_BYTES)
//! +DIR     directory copy 1   (DIR_BYTES)
//! DATA     block space, to the end of the file
//! ```
//!
//! All integers are little-endian.

/// `b"MOLTSTAT"`.
pub const MAGIC: [u8; 8] = *b"MOLTSTAT";
/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Page size the layout is aligned to.
pub const PAGE: u64 = 4096;
/// Entries per directory copy.
pub const DIR_CAPACITY: usize = 256;
/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 160;
/// Bytes of a directory header.
pub const DIR_HEADER_BYTES: usize = 32;
/// Bytes of a directory copy, rounded up to pages.
pub const DIR_BYTES: u64 = ((DIR_HEADER_BYTES + DIR_CAPACITY * ENTRY_BYTES) as u64).div_ceil(PAGE) * PAGE;
/// Offset of directory copy 0.
pub const DIR0: u64 = PAGE;
/// Offset of directory copy 1.
pub const DIR1: u64 = PAGE + DIR_BYTES;
/// Offset of block space.
pub const DATA: u64 = PAGE + 2 * DIR_BYTES;
/// Block alignment.
pub const ALIGN: u64 = 64;
/// Longest owner or block name.
pub const NAME_MAX: usize = 64;

/// Entry flag: the block is in use.
pub const F_LIVE: u32 = 1;
/// Entry flag: replaced by a migrated block; kept while old code may run.
pub const F_RETIRED: u32 = 2;
/// Entry flag: being filled by a migration; discarded if found at open.
pub const F_MIGRATING: u32 = 4;

/// Superblock field offsets.
mod sb {
    pub const MAGIC: usize = 0;
    pub const FORMAT: usize = 8;
    pub const PAGE: usize = 12;
    pub const FILE_SIZE: usize = 16;
    pub const DIR0: usize = 24;
    pub const DIR1: usize = 32;
    pub const DATA: usize = 40;
    pub const DIR_CAPACITY: usize = 48;
    pub const ENTRY_BYTES: usize = 52;
    pub const CRC: usize = 56;
    pub const LEN: usize = 60;
}

/// The superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// The file's size in bytes.
    pub file_size: u64,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The owning module.
    pub owner: String,
    /// The block's name.
    pub name: String,
    /// Its schema version.
    pub schema: u32,
    /// `F_*` flags.
    pub flags: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One directory copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    /// Sequence number: the valid copy with the larger one is current. 0: never written.
    pub seq: u64,
    /// The entries.
    pub entries: Vec<Entry>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Encode a superblock into its page.
pub fn encode_superblock(s: &Superblock) -> Vec<u8> {
    let mut b = vec![0u8; PAGE as usize];
    b[sb::MAGIC..sb::MAGIC + 8].copy_from_slice(&MAGIC);
    put32(&mut b, sb::FORMAT, FORMAT_VERSION);
    put32(&mut b, sb::PAGE, PAGE as u32);
    put64(&mut b, sb::FILE_SIZE, s.file_size);
    put64(&mut b, sb::DIR0, DIR0);
    put64(&mut b, sb::DIR1, DIR1);
    put64(&mut b, sb::DATA, DATA);
    put32(&mut b, sb::DIR_CAPACITY, DIR_CAPACITY as u32);
    put32(&mut b, sb::ENTRY_BYTES, ENTRY_BYTES as u32);
    let crc = crc32fast::hash(&b[..sb::CRC]);
    put32(&mut b, sb::CRC, crc);
    b
}

/// Decode and check the superblock of a file of `actual_len` bytes.
pub fn decode_superblock(b: &[u8], actual_len: u64) -> Result<Superblock, String> {
    if actual_len < DATA || b.len() < sb::LEN {
        return Err(format!("truncated: {actual_len} bytes, smaller than the {DATA}-byte header"));
    }
    if b[sb::MAGIC..sb::MAGIC + 8] != MAGIC {
        return Err("wrong magic: not a molt state file".into());
    }
    let format = u32_at(b, sb::FORMAT).unwrap_or(0);
    if format > FORMAT_VERSION {
        return Err(format!(
            "format version {format} is newer than this molt's {FORMAT_VERSION}: upgrade molt to open it"
        ));
    }
    if format != FORMAT_VERSION {
        return Err(format!("unknown format version {format}"));
    }
    let crc = u32_at(b, sb::CRC).unwrap_or(0);
    if crc != crc32fast::hash(&b[..sb::CRC]) {
        return Err("superblock checksum mismatch: the superblock is corrupt".into());
    }
    let page = u32_at(b, sb::PAGE).unwrap_or(0);
    let layout = (
        u64_at(b, sb::DIR0),
        u64_at(b, sb::DIR1),
        u64_at(b, sb::DATA),
        u32_at(b, sb::DIR_CAPACITY),
        u32_at(b, sb::ENTRY_BYTES),
    );
    if page as u64 != PAGE
        || layout != (Some(DIR0), Some(DIR1), Some(DATA), Some(DIR_CAPACITY as u32), Some(ENTRY_BYTES as u32))
    {
        return Err("superblock describes a layout this molt does not write".into());
    }
    let file_size = u64_at(b, sb::FILE_SIZE).unwrap_or(0);
    if file_size != actual_len {
        return Err(format!(
            "size mismatch: the superblock says {file_size} bytes, the file has {actual_len} (truncated or extended)"
        ));
    }
    Ok(Superblock { file_size })
}

fn put_name(b: &mut [u8], at: usize, s: &str) {
    let n = s.len().min(NAME_MAX);
    b[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get_name(b: &[u8], at: usize) -> Result<String, String> {
    let raw = b.get(at..at + NAME_MAX).ok_or("entry out of bounds")?;
    let end = raw.iter().position(|c| *c == 0).unwrap_or(NAME_MAX);
    let s = std::str::from_utf8(&raw[..end]).map_err(|_| "a name is not UTF-8".to_owned())?;
    if s.is_empty() {
        return Err("an empty name".into());
    }
    if raw[end..].iter().any(|c| *c != 0) {
        return Err("a name with bytes after its terminator".into());
    }
    Ok(s.to_owned())
}

/// Encode a directory copy (`DIR_BYTES`).
pub fn encode_directory(d: &Directory) -> Vec<u8> {
    let mut b = vec![0u8; DIR_BYTES as usize];
    put64(&mut b, 0, d.seq);
    put32(&mut b, 8, d.entries.len() as u32);
    for (i, e) in d.entries.iter().enumerate() {
        let at = DIR_HEADER_BYTES + i * ENTRY_BYTES;
        put_name(&mut b, at, &e.owner);
        put_name(&mut b, at + NAME_MAX, &e.name);
        put32(&mut b, at + 128, e.schema);
        put32(&mut b, at + 132, e.flags);
        put64(&mut b, at + 136, e.offset);
        put64(&mut b, at + 144, e.len);
    }
    let body = DIR_HEADER_BYTES + d.entries.len() * ENTRY_BYTES;
    let crc = dir_crc(&b, body);
    put32(&mut b, 16, crc);
    b
}

/// The checksum of a directory: header (with its crc field zeroed) and entries.
fn dir_crc(b: &[u8], body: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..16]);
    h.update(&[0u8; 4]);
    h.update(&b[20..body]);
    h.finalize()
}

/// Decode and check a directory copy of a file of `file_size` bytes.
/// `Ok(None)`: never written (all zero).
pub fn decode_directory(b: &[u8], file_size: u64) -> Result<Option<Directory>, String> {
    if b.len() < DIR_BYTES as usize {
        return Err("directory out of bounds".into());
    }
    let seq = u64_at(b, 0).ok_or("short header")?;
    let count = u32_at(b, 8).ok_or("short header")? as usize;
    if seq == 0 {
        return if b[..DIR_HEADER_BYTES].iter().all(|x| *x == 0) {
            Ok(None)
        } else {
            Err("sequence 0 with a non-empty header".into())
        };
    }
    if count > DIR_CAPACITY {
        return Err(format!("{count} entries, more than the {DIR_CAPACITY} a directory holds"));
    }
    let body = DIR_HEADER_BYTES + count * ENTRY_BYTES;
    if u32_at(b, 16) != Some(dir_crc(b, body)) {
        return Err("checksum mismatch".into());
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(count);
    for i in 0..count {
        let at = DIR_HEADER_BYTES + i * ENTRY_BYTES;
        let e = Entry {
            owner: get_name(b, at).map_err(|e| format!("entry {i}: owner: {e}"))?,
            name: get_name(b, at + NAME_MAX).map_err(|e| format!("entry {i}: name: {e}"))?,
            schema: u32_at(b, at + 128).ok_or("entry out of bounds")?,
            flags: u32_at(b, at + 132).ok_or("entry out of bounds")?,
            offset: u64_at(b, at + 136).ok_or("entry out of bounds")?,
            len: u64_at(b, at + 144).ok_or("entry out of bounds")?,
        };
        if e.flags & !(F_LIVE | F_RETIRED | F_MIGRATING) != 0 || e.flags == 0 {
            return Err(format!("entry {i} ({}/{}): unknown flags {:#x}", e.owner, e.name, e.flags));
        }
        let end = e.offset.checked_add(e.len);
        if e.offset < DATA || e.offset % ALIGN != 0 || e.len == 0 || end.is_none_or(|x| x > file_size) {
            return Err(format!(
                "entry {i} ({}/{}): block {}+{} lies outside the block space",
                e.owner, e.name, e.offset, e.len
            ));
        }
        if let Some(o) = entries.iter().find(|o| e.offset < o.offset + o.len && o.offset < e.offset + e.len) {
            return Err(format!("entry {i} ({}/{}) overlaps {}/{}", e.owner, e.name, o.owner, o.name));
        }
        entries.push(e);
    }
    Ok(Some(Directory { seq, entries }))
}

/// First-fit allocation of `len` bytes (aligned) among `entries`' blocks in
/// `[DATA, file_size)`; `None` when no gap is large enough.
pub fn allocate(entries: &[Entry], len: u64, file_size: u64) -> Option<u64> {
    let len = len.max(1).div_ceil(ALIGN) * ALIGN;
    let mut used: Vec<(u64, u64)> =
        entries.iter().map(|e| (e.offset, e.offset + e.len.div_ceil(ALIGN) * ALIGN)).collect();
    used.sort_unstable();
    let mut at = DATA;
    for (start, end) in used {
        if start >= at + len {
            break;
        }
        at = at.max(end);
    }
    (at + len <= file_size).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: &str, name: &str, offset: u64, len: u64) -> Entry {
        Entry { owner: owner.into(), name: name.into(), schema: 1, flags: F_LIVE, offset, len }
    }

    #[test]
    fn round_trips() {
        let s = Superblock { file_size: DATA + (1 << 20) };
        assert_eq!(decode_superblock(&encode_superblock(&s), s.file_size).unwrap(), s);
        let d = Directory {
            seq: 7,
            entries: vec![entry("counter", "count", DATA, 64), entry("rl", "buckets", DATA + 64, 4096)],
        };
        assert_eq!(decode_directory(&encode_directory(&d), DATA + 8192).unwrap(), Some(d));
        assert_eq!(decode_directory(&vec![0; DIR_BYTES as usize], DATA).unwrap(), None);
    }

    #[test]
    fn allocation_is_first_fit_and_bounded() {
        let size = DATA + 1024;
        assert_eq!(allocate(&[], 100, size), Some(DATA));
        let e = [entry("a", "x", DATA, 64), entry("a", "y", DATA + 256, 64)];
        assert_eq!(allocate(&e, 64, size), Some(DATA + 64), "the gap after the first block");
        assert_eq!(allocate(&e, 200, size), Some(DATA + 320), "too big for the gap: after the last");
        assert_eq!(allocate(&e, 2000, size), None);
    }
}
