//! The rings in a shared-memory segment, the parent's [`Isolated`] and the
//! child's [`host_main`].

use crate::sync::{AtomicU32, AtomicU64};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ring::{Consumer, HEADER, Producer, RingError, RingMem};
use crate::sys::shm::Segment;

/// The futex word behind a ring's `sleeping` (a std atomic in shared
/// memory; loom builds never get here: `ShmRing::of` refuses them).
fn futex_word(a: &AtomicU32) -> &std::sync::atomic::AtomicU32 {
    #[cfg(not(molt_loom))]
    return a;
    #[cfg(molt_loom)]
    {
        let _ = a;
        unreachable!("shared-memory rings do not exist in loom builds")
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    crate::sys::shm::futex_wait(futex_word(word), expected, timeout);
}

fn futex_wake(word: &AtomicU32) {
    crate::sys::shm::futex_wake(futex_word(word));
}

/// Data bytes of each ring.
pub const RING_CAP: usize = 1 << 20;
/// How long a side spins on an empty ring before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// The longest single sleep (a waiting side looks at its peer's health this often).
const NAP: Duration = Duration::from_millis(10);

/// Record kinds.
mod kind {
    /// child → parent: the module loaded; payload: its name and version.
    pub const READY: u32 = 1;
    /// child → parent: the module failed to load; payload: why.
    pub const LOAD_FAILED: u32 = 2;
    /// parent → child: a message; payload: tag (u64 LE) and data.
    pub const MESSAGE: u32 = 3;
    /// child → parent: a message the module sent to the host; payload: tag and data.
    pub const REPLY: u32 = 4;
    /// child → parent: the call finished; payload: empty, or the error text.
    pub const DONE: u32 = 5;
    /// child → parent: the call failed; payload: the error text.
    pub const FAILED: u32 = 6;
    /// parent → child: an HTTP hook; payload: the transaction's snapshot.
    pub const HOOK: u32 = 7;
    /// child → parent: the hook ran; payload: its edits and failure.
    pub const HOOK_DONE: u32 = 8;
    /// child → supervisor: create a state block (the child's region is a
    /// secondary); payload: schema (u32), minimum length (u64), name.
    pub const STATE_OPEN: u32 = 9;
    /// supervisor → child: the block is there; payload: status (i32) and
    /// the error text.
    pub const STATE_DONE: u32 = 10;
}

/// What runs an HTTP hook in the child: the module version and the
/// snapshot in, the encoded reply out (`http::isolated::serve_hook`).
pub type HookServer<'a> = &'a dyn Fn(&crate::module::ModuleVersion, &[u8]) -> Vec<u8>;

/// One ring inside a segment.
#[derive(Clone, Copy)]
pub struct ShmRing {
    base: *mut u8,
    cap: usize,
    /// The futex word its consumer sleeps on: its own, or (the requests
    /// to a child, which waits on all of them at once) ring 0's.
    sleep_word: *mut u8,
}

// SAFETY: the pointer is into a Segment the owner of this ShmRing keeps
// mapped; the ring's protocol decides who touches which bytes.
unsafe impl Send for ShmRing {}

impl ShmRing {
    /// Ring `index` of `seg` (laid out back to back, `HEADER + cap` each).
    fn of(seg: &Segment, index: usize, cap: usize) -> ShmRing {
        // Loom's atomics are not memory layouts: no ring in shared memory there.
        if cfg!(molt_loom) {
            panic!("shared-memory rings do not exist in loom builds");
        }
        assert!(seg.len() >= (index + 1) * (HEADER + cap), "segment too small for ring {index}");
        // SAFETY: within the segment (checked just above).
        let base = unsafe { seg.as_ptr().add(index * (HEADER + cap)) };
        // SAFETY: offset 128 of this ring's header, inside the segment.
        ShmRing { base, cap, sleep_word: unsafe { base.add(128) } }
    }

    /// The requests of worker `w` to a child: ring `2w`, sleeping on ring
    /// 0's word (the child waits on every worker's requests at once).
    pub(crate) fn request(seg: &Segment, w: usize) -> ShmRing {
        let mut r = ShmRing::of(seg, 2 * w, RING_CAP);
        // SAFETY: offset 128 of ring 0's header, inside the segment.
        r.sleep_word = unsafe { seg.as_ptr().add(128) };
        r
    }

    /// The replies of a child to worker `w`: ring `2w + 1`.
    pub(crate) fn reply(seg: &Segment, w: usize) -> ShmRing {
        ShmRing::of(seg, 2 * w + 1, RING_CAP)
    }

    /// The child's reports to its supervisor (ready, or why not): the ring
    /// after every worker's pair.
    pub(crate) fn control(seg: &Segment, workers: usize) -> ShmRing {
        ShmRing::of(seg, 2 * workers, RING_CAP)
    }

    /// The supervisor's answers to the child's requests (state blocks to
    /// create): the ring after the control ring.
    pub(crate) fn control_in(seg: &Segment, workers: usize) -> ShmRing {
        ShmRing::of(seg, 2 * workers + 1, RING_CAP)
    }

    /// The size of a segment for `workers` pairs and the two control rings.
    pub fn segment_len(workers: usize) -> usize {
        (2 * workers + 2) * (HEADER + RING_CAP)
    }

    fn word<T>(&self, offset: usize) -> &T {
        // SAFETY: `offset` is one of the header's word offsets (0, 64, 128),
        // aligned (a segment is page-aligned and HEADER + cap is a multiple
        // of 64), inside the mapping, which outlives `self`'s user.
        unsafe { &*self.base.add(offset).cast::<T>() }
    }
}

impl RingMem for ShmRing {
    fn head(&self) -> &AtomicU64 {
        self.word(0)
    }
    fn tail(&self) -> &AtomicU64 {
        self.word(64)
    }
    fn sleeping(&self) -> &AtomicU32 {
        // SAFETY: `sleep_word` is offset 128 of a ring header of the same
        // segment: aligned, inside the mapping, which outlives `self`'s user.
        unsafe { &*self.sleep_word.cast::<AtomicU32>() }
    }
    fn cap(&self) -> usize {
        self.cap
    }
    fn write(&self, at: usize, bytes: &[u8]) {
        // Checked here, not only by the ring: this is the one place a bad
        // offset could write outside the mapping.
        assert!(at.checked_add(bytes.len()).is_some_and(|end| end <= self.cap), "ring write out of bounds");
        // SAFETY: `at + len <= cap` (the ring checks positions), so the
        // range is inside this ring's data; the protocol gives it to us.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(HEADER + at), bytes.len()) };
    }
    fn read(&self, at: usize, out: &mut [u8]) {
        assert!(at.checked_add(out.len()).is_some_and(|end| end <= self.cap), "ring read out of bounds");
        // SAFETY: as in `write`; the bytes are copied out before anyone
        // looks at them (the other side may be hostile).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(HEADER + at), out.as_mut_ptr(), out.len()) };
    }
}

/// Push, waking the consumer if it sleeps; waits (up to `within`) while
/// the ring is full.
fn send(p: &mut Producer<ShmRing>, kind: u32, payload: &[u8], within: Duration) -> Result<(), IsolateError> {
    let until = Instant::now() + within;
    loop {
        if p.push(kind, payload).map_err(IsolateError::Ring)? {
            if p.consumer_sleeps() {
                futex_wake(p.mem().sleeping());
            }
            return Ok(());
        }
        if Instant::now() > until {
            return Err(IsolateError::Timeout("the ring stayed full"));
        }
        std::thread::yield_now();
    }
}

/// Wait for a record: spin for [`SPIN`], then sleep on the ring's futex in
/// naps of [`NAP`], calling `alive` between naps; `Ok(None)` after `within`.
fn recv(
    c: &mut Consumer<ShmRing>,
    out: &mut Vec<u8>,
    within: Duration,
    mut alive: impl FnMut() -> Result<(), IsolateError>,
) -> Result<Option<u32>, IsolateError> {
    let start = Instant::now();
    loop {
        if let Some(k) = c.pop(out).map_err(IsolateError::Ring)? {
            return Ok(Some(k));
        }
        let waited = start.elapsed();
        if waited >= within {
            return Ok(None);
        }
        if waited < SPIN {
            std::hint::spin_loop();
            continue;
        }
        c.prepare_sleep();
        if !c.ready() {
            futex_wait(c.mem().sleeping(), 1, NAP.min(within - waited));
        }
        c.awake();
        if let Err(e) = alive() {
            // What the peer published before it ended is still ours to read
            // (it publishes before it exits).
            if let Some(k) = c.pop(out).map_err(IsolateError::Ring)? {
                return Ok(Some(k));
            }
            return Err(e);
        }
    }
}

/// Creates a state block for a child: (name, schema, minimum length).
pub(super) type BlockMaker<'a> = &'a dyn Fn(&str, u32, u64) -> Result<(), (i32, String)>;

/// Wait (at most `within`) for a child's report on its control ring: the
/// ready text (name, version and declared hooks, a line each), or why it
/// did not load. Meanwhile its requests to create state blocks are
/// answered with `create` (owner-checked by the caller), on `answer`.
pub(super) fn recv_control(
    control: &mut Consumer<ShmRing>,
    answer: &mut Producer<ShmRing>,
    child: &mut Child,
    within: Duration,
    create: BlockMaker<'_>,
) -> Result<String, String> {
    let until = Instant::now() + within;
    let mut buf = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let got = recv(control, &mut buf, left, || match child.try_wait() {
            Ok(Some(status)) => Err(IsolateError::Died(status.to_string())),
            _ => Ok(()),
        })
        .map_err(|e| e.to_string())?;
        match got {
            Some(kind::READY) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Some(kind::LOAD_FAILED) => return Err(String::from_utf8_lossy(&buf).into_owned()),
            Some(kind::STATE_OPEN) if buf.len() > 12 => {
                let schema = u32::from_le_bytes(buf[..4].try_into().unwrap_or_default());
                let min_len = u64::from_le_bytes(buf[4..12].try_into().unwrap_or_default());
                let result = match std::str::from_utf8(&buf[12..]) {
                    Ok(name) => create(name, schema, min_len),
                    Err(_) => Err((molt_abi::ffi::MOLT_ERR_INVALID_ARG, "a block name that is not UTF-8".into())),
                };
                let mut reply = Vec::new();
                let (status, text) = result.err().unwrap_or((0, String::new()));
                reply.extend_from_slice(&status.to_le_bytes());
                reply.extend_from_slice(text.as_bytes());
                send(answer, kind::STATE_DONE, &reply, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            }
            Some(_) => return Err("a report that is not the protocol's".into()),
            None => return Err(format!("it was not ready within {} s", within.as_secs())),
        }
    }
}

/// Queue HTTP hook `snapshot` to the child (a worker's side); `Ok(false)`
/// when the ring is full.
pub(crate) fn push_hook(p: &mut Producer<ShmRing>, snapshot: &[u8]) -> Result<bool, RingError> {
    let pushed = p.push(kind::HOOK, snapshot)?;
    if pushed && p.consumer_sleeps() {
        futex_wake(p.mem().sleeping());
    }
    Ok(pushed)
}

/// The next hook reply from the child, if one waits (a worker's side).
pub(crate) fn pop_hook_reply(c: &mut Consumer<ShmRing>, out: &mut Vec<u8>) -> Result<bool, RingError> {
    match c.pop(out)? {
        None => Ok(false),
        Some(kind::HOOK_DONE) => Ok(true),
        Some(_) => Err(RingError::Corrupt("a record the protocol does not have")),
    }
}

/// Why an isolated call failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    /// The child died (its exit status).
    #[error("the module's child process died ({0})")]
    Died(String),
    /// A ring was corrupted (the child is killed).
    #[error("{0}")]
    Ring(RingError),
    /// Nothing came in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The module failed the call (or to load).
    #[error("{0}")]
    Module(String),
    /// Starting the child failed.
    #[error("{0}")]
    Start(String),
}

/// A message the module sent to the host during a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Its tag.
    pub tag: u64,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// A module in a child process, from the parent's side.
pub struct Isolated {
    child: Child,
    /// The child's private directory (its runtime copy), removed on drop.
    dir: PathBuf,
    _seg: Segment,
    to: Producer<ShmRing>,
    from: Consumer<ShmRing>,
    control: Consumer<ShmRing>,
    buf: Vec<u8>,
    /// The module's name and version, as the child reported.
    pub loaded: String,
}

impl Isolated {
    /// Start `molt` (the binary at `molt`) as the host of module `module`
    /// with `config`, and wait until it loaded the module (at most `within`).
    pub fn spawn(
        molt: &Path,
        module: &Path,
        config: &[(String, String)],
        within: Duration,
    ) -> Result<Isolated, IsolateError> {
        let seg = Segment::create(ShmRing::segment_len(1)).map_err(|e| IsolateError::Start(e.to_string()))?;
        let dir = std::env::temp_dir().join(format!("molt-isolated-{}", uuid::Uuid::new_v4().simple()));
        crate::sys::files::ensure_private_dir(&dir).map_err(IsolateError::Start)?;
        let mut cmd = Command::new(molt);
        cmd.arg("module-host").arg("--segment").arg(seg.os_id()).arg("--module").arg(module);
        cmd.arg("--run-dir").arg(&dir);
        for (k, v) in config {
            cmd.arg("--config").arg(format!("{k}={v}"));
        }
        let child = match cmd.stdin(Stdio::null()).spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(IsolateError::Start(format!("cannot start {}: {e}", molt.display())));
            }
        };
        let mut me = Isolated {
            child,
            dir,
            to: Producer::new(ShmRing::request(&seg, 0)),
            from: Consumer::new(ShmRing::reply(&seg, 0)),
            buf: Vec::new(),
            loaded: String::new(),
            control: Consumer::new(ShmRing::control(&seg, 1)),
            _seg: seg,
        };
        let mut buf = std::mem::take(&mut me.buf);
        let child = &mut me.child;
        let got = recv(&mut me.control, &mut buf, within, || match child.try_wait() {
            Ok(Some(status)) => Err(IsolateError::Died(status.to_string())),
            _ => Ok(()),
        })?;
        match got {
            Some(kind::READY) => {
                let text = String::from_utf8_lossy(&buf);
                me.loaded = text.split('\n').take(2).collect::<Vec<_>>().join(" ");
            }
            Some(kind::LOAD_FAILED) => return Err(IsolateError::Module(String::from_utf8_lossy(&buf).into_owned())),
            Some(_) => return Err(IsolateError::Ring(RingError::Corrupt("a first record that is not ready"))),
            None => return Err(IsolateError::Timeout("the child did not load the module in time")),
        }
        me.buf = buf;
        Ok(me)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's private directory (removed when this drops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn recv(&mut self, out: &mut Vec<u8>, within: Duration) -> Result<Option<u32>, IsolateError> {
        let child = &mut self.child;
        recv(&mut self.from, out, within, || match child.try_wait() {
            Ok(Some(status)) => Err(IsolateError::Died(status.to_string())),
            _ => Ok(()),
        })
    }

    /// Run an HTTP hook in the child: `snapshot` out, the encoded reply
    /// back (at most `within`). The worker's path to an isolated module's
    /// hooks; see `http::isolated`.
    pub fn hook(&mut self, snapshot: &[u8], within: Duration) -> Result<Vec<u8>, IsolateError> {
        send(&mut self.to, kind::HOOK, snapshot, within)?;
        let mut buf = std::mem::take(&mut self.buf);
        let result = match self.recv(&mut buf, within) {
            Err(e) => Err(e),
            Ok(None) => Err(IsolateError::Timeout("the module did not finish the hook in time")),
            Ok(Some(kind::HOOK_DONE)) => Ok(buf.clone()),
            Ok(Some(_)) => Err(IsolateError::Ring(RingError::Corrupt("a record the protocol does not have"))),
        };
        self.buf = buf;
        if matches!(result, Err(IsolateError::Ring(_) | IsolateError::Timeout(_))) {
            let _ = self.child.kill();
        }
        result
    }

    /// Send the module a message (`tag`, `data`) and collect what it sends
    /// to the host, until the call is done (at most `within`).
    pub fn call(&mut self, tag: u64, data: &[u8], within: Duration) -> Result<Vec<Reply>, IsolateError> {
        let mut msg = Vec::with_capacity(8 + data.len());
        msg.extend_from_slice(&tag.to_le_bytes());
        msg.extend_from_slice(data);
        send(&mut self.to, kind::MESSAGE, &msg, within)?;
        let mut replies = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            match self.recv(&mut buf, within) {
                Err(e) => break Err(e),
                Ok(None) => break Err(IsolateError::Timeout("the module did not finish the call in time")),
                Ok(Some(kind::REPLY)) if buf.len() >= 8 => {
                    let tag = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                    replies.push(Reply { tag, data: buf[8..].to_vec() });
                }
                Ok(Some(kind::DONE)) => break Ok(replies),
                Ok(Some(kind::FAILED)) => break Err(IsolateError::Module(String::from_utf8_lossy(&buf).into_owned())),
                Ok(Some(_)) => {
                    break Err(IsolateError::Ring(RingError::Corrupt("a record the protocol does not have")));
                }
            }
        };
        self.buf = buf;
        if matches!(result, Err(IsolateError::Ring(_) | IsolateError::Timeout(_))) {
            // A child that broke the protocol or hangs is not used again.
            let _ = self.child.kill();
        }
        result
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever the child left (it may have died mid-call).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a child is told on its command line.
pub struct HostArgs<'a> {
    /// The segment's name.
    pub os_id: &'a str,
    /// The module's library.
    pub module: &'a Path,
    /// Its private directory (the parent made it and removes it).
    pub run_dir: &'a Path,
    /// The module's config.
    pub config: Vec<(String, String)>,
    /// Workers, one pair of rings each.
    pub workers: usize,
    /// Per worker, a datagram socket to poke after a reply (a worker waits
    /// in its poller, not on a futex): a path, or `@name` in the abstract
    /// namespace; none: the reader sleeps on the reply ring's futex.
    pub wake: Vec<String>,
    /// How to confine this process before the module loads.
    pub sandbox: Option<crate::sys::sandbox::Confinement>,
    /// molt's state file, mapped here as a secondary (blocks the module
    /// lacks are created by molt, asked over the control rings); none: a
    /// region in this process's memory.
    pub state: Option<PathBuf>,
}

/// `molt module-host`: load the module, attach to the segment, report
/// ready (or why not) on the control ring, and answer every worker's
/// messages and hooks until the parent goes away (the child dies with its
/// parent).
pub fn host_main(args: HostArgs<'_>, hook: HookServer<'_>) -> Result<(), String> {
    crate::sys::shm::die_with_parent().map_err(|e| format!("cannot arrange to die with the parent: {e}"))?;
    let seg = Segment::open(args.os_id).map_err(|e| e.to_string())?;
    let workers = args.workers.clamp(1, 1024);
    if seg.len() < ShmRing::segment_len(workers) {
        return Err(format!("segment {} is {} bytes, smaller than {workers} pairs of rings", args.os_id, seg.len()));
    }
    if !args.wake.is_empty() && args.wake.len() != workers {
        return Err(format!("{} wake sockets for {workers} workers", args.wake.len()));
    }
    let mut from: Vec<Consumer<ShmRing>> = (0..workers).map(|w| Consumer::new(ShmRing::request(&seg, w))).collect();
    let mut to: Vec<Producer<ShmRing>> = (0..workers).map(|w| Producer::new(ShmRing::reply(&seg, w))).collect();
    let control = std::sync::Arc::new(std::sync::Mutex::new((
        Producer::new(ShmRing::control(&seg, workers)),
        Consumer::new(ShmRing::control_in(&seg, workers)),
    )));
    let report = |kind: u32, payload: &[u8]| {
        let mut c = control.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        send(&mut c.0, kind, payload, Duration::from_secs(5))
    };
    // The state region first (its file is opened before any confinement).
    let region = match &args.state {
        None => crate::state::Region::anonymous(crate::host::ANON_STATE_SIZE).map_err(|e| e.to_string())?,
        Some(p) => match crate::state::Region::open_secondary(p) {
            Ok(r) => r,
            Err(e) => {
                let _ = report(kind::LOAD_FAILED, e.to_string().as_bytes());
                return Err(e.to_string());
            }
        },
    };
    if args.state.is_some() {
        let ctl = control.clone();
        region.set_creator(Box::new(move |_owner, name, schema, min_len| {
            let mut c = ctl.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut m = Vec::with_capacity(12 + name.len());
            m.extend_from_slice(&schema.to_le_bytes());
            m.extend_from_slice(&min_len.to_le_bytes());
            m.extend_from_slice(name.as_bytes());
            let failed = |e: IsolateError| (molt_abi::ffi::MOLT_ERR_FAILED, format!("asking molt for state block {name:?}: {e}"));
            send(&mut c.0, kind::STATE_OPEN, &m, Duration::from_secs(5)).map_err(failed)?;
            let mut out = Vec::new();
            match recv(&mut c.1, &mut out, Duration::from_secs(5), || Ok(())).map_err(failed)? {
                Some(kind::STATE_DONE) if out.len() >= 4 => {
                    let status = i32::from_le_bytes(out[..4].try_into().unwrap_or_default());
                    if status == 0 { Ok(()) } else { Err((status, String::from_utf8_lossy(&out[4..]).into_owned())) }
                }
                _ => Err((molt_abi::ffi::MOLT_ERR_FAILED, format!("molt did not create state block {name:?} (state_open works in init only for an isolated module)"))),
            }
        }));
    }
    let poke = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
    let _ = poke.set_nonblocking(true);
    crate::sys::files::ensure_private_dir(args.run_dir)?;
    // Confined before the module's code runs at all (its init included).
    let confined = match &args.sandbox {
        None => crate::sys::sandbox::no_new_privs(),
        Some(c) => crate::sys::sandbox::confine(c),
    };
    let sandbox = match confined {
        Ok(said) => said,
        Err(e) => {
            let _ = report(kind::LOAD_FAILED, format!("sandbox: {e}").as_bytes());
            return Err(e);
        }
    };
    let loader = crate::module::Loader::new(crate::sync::Arc::new(crate::host::Host::new(region)), args.run_dir)
        .map_err(|e| e.to_string())?;
    let forever = Duration::from_secs(3600);
    let spec = crate::module::ModuleSpec { config: args.config, ..crate::module::ModuleSpec::new(args.module) };
    let v = match loader.load(&spec) {
        Ok(v) => v,
        Err(e) => {
            let _ = report(kind::LOAD_FAILED, e.to_string().as_bytes());
            return Err(e.to_string());
        }
    };
    let meta = v.meta();
    let ready = format!("{}\n{}\n{}\n{sandbox}", meta.name, meta.version, meta.http_hooks);
    report(kind::READY, ready.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut next = 0;
    let mut idle_since: Option<Instant> = None;
    let result = 'serve: loop {
        // Round robin over the workers' request rings.
        let mut got = None;
        for i in 0..workers {
            let w = (next + i) % workers;
            match from[w].pop(&mut buf) {
                Ok(Some(k)) => {
                    got = Some((w, k));
                    next = w + 1;
                    break;
                }
                Ok(None) => {}
                Err(e) => break 'serve Err(e.to_string()),
            }
        }
        let Some((w, got)) = got else {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            from[0].prepare_sleep();
            if !from.iter().any(Consumer::ready) {
                futex_wait(from[0].mem().sleeping(), 1, NAP);
            }
            from[0].awake();
            continue;
        };
        idle_since = None;
        let sent = if got == kind::HOOK {
            let reply = hook(&v, &buf);
            send(&mut to[w], kind::HOOK_DONE, &reply, forever)
        } else if got == kind::MESSAGE && buf.len() >= 8 {
            let tag = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
            match v.call_direct(tag, &buf[8..]) {
                Ok(replies) => replies.iter().try_for_each(|r| {
                    let mut m = Vec::with_capacity(8 + r.data.len());
                    m.extend_from_slice(&r.tag.to_le_bytes());
                    m.extend_from_slice(&r.data);
                    send(&mut to[w], kind::REPLY, &m, forever)
                }),
                Err(e) => send(&mut to[w], kind::FAILED, e.to_string().as_bytes(), forever),
            }
            .and_then(|()| send(&mut to[w], kind::DONE, &[], forever))
        } else {
            break Err("a worker sent a record the protocol does not have".to_owned());
        };
        if let Err(e) = sent {
            break Err(e.to_string());
        }
        if let Some(path) = args.wake.get(w) {
            // A full socket buffer already holds a poke: the worker will look.
            let _ = crate::sys::shm::poke(&poke, path);
        }
    };
    drop(v);
    result
}
