//! Checking that bytes are a whole ELF shared object for this machine
//! before the dynamic loader maps them: `dlopen` of a file cut short maps
//! pages past its end, and touching one of those kills the process with
//! SIGBUS. Every header and segment must lie inside the bytes we have.

/// Why the bytes are not a loadable shared object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// Not ELF at all (no magic).
    NotElf,
    /// ELF, but not a shared object: `e_type` 1 relocatable, 2 executable, 4 core...
    NotShared(u16),
    /// For another class, byte order or machine than this process.
    OtherMachine(String),
    /// A header or segment lies (partly) past the end: the file was cut short.
    Truncated(String),
    /// A header is inconsistent.
    Malformed(String),
}

impl std::fmt::Display for ElfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElfError::NotElf => write!(f, "no ELF header: it is not a compiled library"),
            ElfError::NotShared(1) => write!(f, "an ELF relocatable object (.o), not a shared object"),
            ElfError::NotShared(2) => write!(f, "an ELF executable, not a shared object"),
            ElfError::NotShared(t) => write!(f, "an ELF file of type {t}, not a shared object"),
            ElfError::OtherMachine(w) => write!(f, "built for another machine: {w}"),
            ElfError::Truncated(w) => write!(f, "truncated: {w} (was it copied while being written?)"),
            ElfError::Malformed(w) => write!(f, "a malformed ELF file: {w}"),
        }
    }
}

const EHDR: usize = 64;
const PHDR: usize = 56;
const SHDR: usize = 64;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;

/// The `e_machine` of this process's architecture.
const MACHINE: u16 = if cfg!(target_arch = "x86_64") {
    62
} else if cfg!(target_arch = "aarch64") {
    183
} else if cfg!(target_arch = "riscv64") {
    243
} else {
    0
};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Check that `b` is a complete 64-bit little-endian ELF shared object for
/// this machine: the header, the program header table, every segment's
/// file range and the section header table all inside `b`.
pub fn check_shared_object(b: &[u8]) -> Result<(), ElfError> {
    if b.len() < 4 || &b[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    let len = b.len() as u64;
    if b.len() < EHDR {
        return Err(ElfError::Truncated(format!("{len} bytes, shorter than an ELF header ({EHDR})")));
    }
    if b[4] != 2 || b[5] != 1 || cfg!(target_endian = "big") || cfg!(not(target_pointer_width = "64")) {
        return Err(ElfError::OtherMachine(format!(
            "ELF class {} and byte order {}, this host is 64-bit little-endian",
            b[4], b[5]
        )));
    }
    let e_type = u16_at(b, 16);
    if e_type != 3 {
        return Err(ElfError::NotShared(e_type));
    }
    let machine = u16_at(b, 18);
    if MACHINE != 0 && machine != MACHINE {
        return Err(ElfError::OtherMachine(format!("e_machine {machine}, this host is {MACHINE}")));
    }
    let (phoff, phentsize, phnum) = (u64_at(b, 32), u16_at(b, 54), u16_at(b, 56));
    let (shoff, shentsize, shnum) = (u64_at(b, 40), u16_at(b, 58), u16_at(b, 60));
    if usize::from(phentsize) != PHDR || phnum == 0 {
        return Err(ElfError::Malformed(format!("{phnum} program headers of {phentsize} bytes")));
    }
    let inside = |what: &str, off: u64, size: u64| -> Result<(), ElfError> {
        match off.checked_add(size) {
            Some(end) if end <= len => Ok(()),
            Some(end) => Err(ElfError::Truncated(format!("{what} ends at byte {end}, the file has {len}"))),
            None => Err(ElfError::Malformed(format!("{what} lies beyond any file size"))),
        }
    };
    inside("the program header table", phoff, u64::from(phnum) * PHDR as u64)?;
    if shnum > 0 {
        if usize::from(shentsize) != SHDR {
            return Err(ElfError::Malformed(format!("section headers of {shentsize} bytes")));
        }
        inside("the section header table", shoff, u64::from(shnum) * SHDR as u64)?;
    }
    let (mut loads, mut dynamic) = (0, false);
    for i in 0..usize::from(phnum) {
        let p = phoff as usize + i * PHDR;
        let (p_type, offset, filesz, memsz) = (u32_at(b, p), u64_at(b, p + 8), u64_at(b, p + 32), u64_at(b, p + 40));
        inside(&format!("segment {i} (type {p_type:#x})"), offset, filesz)?;
        if p_type == PT_LOAD {
            loads += 1;
            if filesz > memsz {
                return Err(ElfError::Malformed(format!("segment {i} has more file bytes than memory")));
            }
        }
        dynamic |= p_type == PT_DYNAMIC;
    }
    if loads == 0 || !dynamic {
        return Err(ElfError::Malformed("no loadable segment or no dynamic section".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_passes_and_every_cut_of_it_fails() {
        // The test binary is a PIE: ET_DYN, like a library.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(check_shared_object(&me), Ok(()));
        for len in [0, 3, 40, 64, 100, 1000, 4096, me.len() / 2, me.len() - 1] {
            let e = check_shared_object(&me[..len]).unwrap_err();
            let whole_header = len >= 4;
            assert!(!whole_header || matches!(e, ElfError::Truncated(_)), "{len}: {e}");
        }
        assert_eq!(check_shared_object(b"hello world, not elf"), Err(ElfError::NotElf));
        let mut exe = me.clone();
        exe[16] = 2;
        assert_eq!(check_shared_object(&exe), Err(ElfError::NotShared(2)));
    }
}
