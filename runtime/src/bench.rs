//! `molt bench`: what a module's dispatch costs, next to the mechanisms it
//! could have used instead, measured on this machine in one run.
//!
//! Mechanisms, on the same module and payload:
//! * `direct`: the module's handler called through the ABI with a host call
//!   frame, no queue, no worker (what a plain dlsym'd call with host
//!   services costs);
//! * `in_process`: an event through a worker's run queue to `handle_event`;
//! * `cross_worker`: a message from another thread through the worker's
//!   inbox, answered back (a round trip);
//! * `isolated`: the same handler in a child process (`molt module-host`,
//!   an isolated module), a round trip over two shared-memory rings;
//! * `socket_rpc`: the same handler in a child process (`molt bench-serve`),
//!   a round trip over a Unix socket;
//! * `process_per_call` (opt-in): a child process started per call.
//!
//! Round-trip mechanisms need a module that answers a message to its
//! source (`hello`, `echo_c` do).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use molt_abi::ffi::MOLT_EV_MESSAGE;
use serde_json::{Value, json};

use crate::host::Host;
use crate::module::{Loader, ModuleSpec};
use crate::worker::{Event, Payload};
use crate::{Runtime, RuntimeConfig};

/// What to measure.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// The module's library.
    pub module: PathBuf,
    /// Its config.
    pub config: Vec<(String, String)>,
    /// Events per mechanism (after warm-up).
    pub events: u64,
    /// Or stop each mechanism after this long.
    pub duration: Option<Duration>,
    /// Payload bytes per event.
    pub payload: usize,
    /// Workers of the runtime.
    pub workers: usize,
    /// Fixed rate (events per second) for the round-trip mechanisms:
    /// latency counts from the intended send time (no coordinated omission).
    pub rate: Option<u64>,
    /// Also start a process per call (slow).
    pub process_per_call: bool,
    /// Pin worker i to CPU i and the measuring thread to CPU `workers`.
    pub pin: bool,
    /// Show progress on stderr.
    pub progress: bool,
    /// The molt binary (for the child processes).
    pub molt: PathBuf,
}

/// One mechanism's result.
#[derive(Debug, Clone)]
pub struct Row {
    /// Mechanism name.
    pub mechanism: &'static str,
    /// Latencies in ns.
    pub hist: Histogram<u64>,
    /// Events per second.
    pub throughput: f64,
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_nanos() as u64).max(1));
}

/// A failure with its message (the command exits non-zero with it).
pub type BenchResult<T> = Result<T, String>;

struct Pacer {
    start: Instant,
    rate: Option<u64>,
    i: u64,
}

impl Pacer {
    /// The instant the next event is due (now when unpaced); waits for it.
    fn next(&mut self) -> Instant {
        let Some(r) = self.rate else { return Instant::now() };
        let due = self.start + Duration::from_nanos(self.i * 1_000_000_000 / r.max(1));
        self.i += 1;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        due
    }
}

fn progress(opts: &DispatchOptions, name: &str, started: Instant, last: &mut Instant) {
    if opts.progress && started.elapsed() > Duration::from_secs(2) && last.elapsed() > Duration::from_secs(1) {
        eprint!("\r  {name}: {:.0} s ", started.elapsed().as_secs_f64());
        *last = Instant::now();
    }
}

/// Time `one` (one event; it returns when the event started, or was due)
/// over the warm-up and the measured events, with progress and `--duration`.
fn measure(
    opts: &DispatchOptions,
    mechanism: &'static str,
    warm: u64,
    mut one: impl FnMut() -> BenchResult<Instant>,
) -> BenchResult<Row> {
    let mut h = hist();
    let t0 = Instant::now();
    let mut last = t0;
    let mut n = 0;
    for i in 0..warm + opts.events {
        let started = one()?;
        if i >= warm {
            record(&mut h, started.elapsed());
            n += 1;
        }
        progress(opts, mechanism, t0, &mut last);
        if opts.duration.is_some_and(|d| t0.elapsed() > d) {
            break;
        }
    }
    Ok(Row { mechanism, throughput: n as f64 / t0.elapsed().as_secs_f64(), hist: h })
}

/// Run every mechanism and return the rows.
pub fn dispatch(opts: &DispatchOptions) -> BenchResult<Vec<Row>> {
    if !opts.module.exists() {
        return Err(format!("module file {}: not found", opts.module.display()));
    }
    let payload: Vec<u8> = (0..opts.payload).map(|i| (i % 251) as u8).collect();
    let spec = ModuleSpec { config: opts.config.clone(), ..ModuleSpec::new(&opts.module) };
    let warm = (opts.events / 10).clamp(10, 10_000);
    let mut rows = Vec::new();
    if opts.pin {
        crate::sys::cpu::pin_current_thread(opts.workers)
            .map_err(|e| format!("cannot pin the measuring thread: {e}"))?;
    }

    // direct
    // Removed on every way out, errors included.
    let run_dir = ScratchDir::new("molt-bench");
    let loader = Loader::new(crate::sync::Arc::new(Host::default()), &run_dir.0).map_err(|e| e.to_string())?;
    let v = loader.load(&spec).map_err(|e| format!("refused: {e}"))?;
    let first = v.call_direct(7, &payload).map_err(|e| format!("the module's handler failed: {e}"))?;
    let answers = !first.is_empty();
    rows.push(measure(opts, "direct", warm, || {
        let t = Instant::now();
        v.call_direct(7, &payload).map_err(|e| format!("the module's handler failed: {e}"))?;
        Ok(t)
    })?);
    drop(v);

    // in_process and cross_worker, on a runtime
    let rt = Runtime::start(RuntimeConfig {
        workers: opts.workers.max(1),
        run_dir: run_dir.0.join("rt"),
        ..RuntimeConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let v = rt.load(&spec).map_err(|e| format!("refused: {e}"))?;
    let c = rt.spawn(&v, 0, 0).map_err(|(_, e)| e)?;
    let (events, duration, pl) = (warm + opts.events, opts.duration, payload.clone());
    let (samples, elapsed) = rt
        .on_worker(0, move |w| {
            let mut s = Vec::with_capacity(events as usize);
            let t0 = Instant::now();
            for _ in 0..events {
                let t = Instant::now();
                w.enqueue_local(Event {
                    target: c,
                    source: 0,
                    kind: MOLT_EV_MESSAGE,
                    flags: 0,
                    tag: 7,
                    arg0: 0,
                    payload: Payload::copy_from(&pl),
                });
                w.run_until_idle();
                s.push(t.elapsed());
                if duration.is_some_and(|d| t0.elapsed() > d) {
                    break;
                }
            }
            (s, t0.elapsed())
        })
        .map_err(|(_, e)| e)?;
    while rt.replies().try_recv().is_ok() {}
    let errors = rt.total(|s| &s.errors);
    if errors > 0 {
        return Err(format!("the module's handler failed {errors} times on a worker (see the log)"));
    }
    let mut h = hist();
    for d in samples.iter().skip(warm as usize) {
        record(&mut h, *d);
    }
    rows.push(Row { mechanism: "in_process", throughput: samples.len() as f64 / elapsed.as_secs_f64(), hist: h });

    if !answers {
        eprintln!("note: the module does not answer messages: round-trip mechanisms skipped");
        return Ok(rows);
    }
    let target_worker = (opts.workers.max(1) - 1) as u32;
    let c = rt.spawn(&v, target_worker, 0).map_err(|(_, e)| e)?;
    let mut pacer = Pacer { start: Instant::now(), rate: opts.rate, i: 0 };
    rows.push(measure(opts, "cross_worker", warm, || {
        let due = pacer.next();
        rt.send(c, 7, &payload).map_err(|(_, e)| e)?;
        loop {
            let r = rt.next_reply(Duration::from_secs(5)).ok_or("the module did not answer a message within 5 s")?;
            if r.from == c && r.tag == 7 {
                return Ok(due);
            }
        }
    })?);
    drop(v);
    rt.shutdown();

    rows.push(isolated(opts, &payload, warm)?);
    rows.push(socket_rpc(opts, &payload, warm)?);
    if opts.process_per_call {
        rows.push(process_per_call(opts, &payload)?);
    }
    Ok(rows)
}

fn config_args(opts: &DispatchOptions) -> Vec<String> {
    opts.config.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The module in a child process (`molt module-host`), a round trip over
/// the shared-memory rings of an isolated module.
fn isolated(opts: &DispatchOptions, payload: &[u8], warm: u64) -> BenchResult<Row> {
    let mut iso = crate::isolate::Isolated::spawn(&opts.molt, &opts.module, &opts.config, Duration::from_secs(10))
        .map_err(|e| format!("the isolated child: {e}"))?;
    let mut pacer = Pacer { start: Instant::now(), rate: opts.rate, i: 0 };
    measure(opts, "isolated", warm, || {
        let due = pacer.next();
        let replies = iso.call(7, payload, Duration::from_secs(5)).map_err(|e| format!("isolated call: {e}"))?;
        if replies.is_empty() {
            return Err("the isolated module did not answer".into());
        }
        Ok(due)
    })
}

fn socket_rpc(opts: &DispatchOptions, payload: &[u8], warm: u64) -> BenchResult<Row> {
    let sock = std::env::temp_dir().join(format!("molt-bench-rpc-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|e| format!("socket {}: {e}", sock.display()))?;
    let mut child = Command::new(&opts.molt)
        .arg("bench-serve")
        .arg(&opts.module)
        .arg(&sock)
        .args(config_args(opts))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", opts.molt.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(format!("the RPC child exited with {st} before connecting"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("the RPC child did not connect: {e}")),
        }
    };
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut pacer = Pacer { start: Instant::now(), rate: opts.rate, i: 0 };
    let row = measure(opts, "socket_rpc", warm, || {
        let due = pacer.next();
        s.write_all(&(payload.len() as u32).to_le_bytes())
            .and_then(|()| s.write_all(payload))
            .map_err(|e| format!("RPC write: {e}"))?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).map_err(|e| format!("RPC read: {e}"))?;
        let mut reply = vec![0u8; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut reply).map_err(|e| format!("RPC read: {e}"))?;
        Ok(due)
    });
    drop(s);
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock);
    row
}

fn process_per_call(opts: &DispatchOptions, payload: &[u8]) -> BenchResult<Row> {
    let calls = opts.events.clamp(1, 50);
    let mut h = hist();
    let t0 = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let mut child = Command::new(&opts.molt)
            .arg("bench-once")
            .arg(&opts.module)
            .args(config_args(opts))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", opts.molt.display()))?;
        child.stdin.take().ok_or("no stdin")?.write_all(payload).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("a per-call process failed: {}", out.status));
        }
        record(&mut h, t.elapsed());
    }
    Ok(Row { mechanism: "process_per_call", throughput: calls as f64 / t0.elapsed().as_secs_f64(), hist: h })
}

/// `molt bench-serve MODULE SOCKET`: the RPC child. Loads the module,
/// answers length-prefixed messages with its reply until EOF.
pub fn serve(module: &Path, socket: &Path, config: Vec<(String, String)>) -> BenchResult<()> {
    // Removed on every way out, errors included.
    let run_dir = ScratchDir::new("molt-bench-serve");
    let loader = Loader::new(crate::sync::Arc::new(Host::default()), &run_dir.0).map_err(|e| e.to_string())?;
    let v = loader.load(&ModuleSpec { config, ..ModuleSpec::new(module) }).map_err(|e| e.to_string())?;
    let mut s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    while s.read_exact(&mut len).is_ok() {
        let mut msg = vec![0u8; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut msg).map_err(|e| e.to_string())?;
        let replies = v.call_direct(7, &msg).map_err(|e| e.to_string())?;
        let data = replies.first().map(|r| r.data.clone()).unwrap_or_default();
        s.write_all(&(data.len() as u32).to_le_bytes()).and_then(|()| s.write_all(&data)).map_err(|e| e.to_string())?;
    }
    drop(v);
    Ok(())
}

/// `molt bench-once MODULE`: load, handle stdin as one message, print the reply, exit.
pub fn once(module: &Path, config: Vec<(String, String)>) -> BenchResult<()> {
    // Removed on every way out, errors included.
    let run_dir = ScratchDir::new("molt-bench-once");
    let loader = Loader::new(crate::sync::Arc::new(Host::default()), &run_dir.0).map_err(|e| e.to_string())?;
    let v = loader.load(&ModuleSpec { config, ..ModuleSpec::new(module) }).map_err(|e| e.to_string())?;
    let mut msg = Vec::new();
    std::io::stdin().read_to_end(&mut msg).map_err(|e| e.to_string())?;
    let replies = v.call_direct(7, &msg).map_err(|e| e.to_string())?;
    let out = replies.first().map(|r| r.data.clone()).unwrap_or_default();
    std::io::stdout().write_all(&out).map_err(|e| e.to_string())?;
    drop(v);
    Ok(())
}

/// The machine, for the header.
pub fn machine(workers: usize) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "cpu": cpu,
        "cpus": cpus,
        "kernel": kernel,
        "workers": workers,
        "spin_before_park_us": RuntimeConfig::default().spin.as_micros() as u64,
    })
}

/// The JSON document of a run.
pub fn to_json(opts: &DispatchOptions, rows: &[Row]) -> Value {
    json!({
        "module": opts.module,
        "payload_bytes": opts.payload,
        "rate": opts.rate,
        "pinned": opts.pin,
        "machine": machine(opts.workers),
        "mechanisms": rows.iter().map(|r| json!({
            "mechanism": r.mechanism,
            "samples": r.hist.len(),
            "throughput_per_s": r.throughput,
            "p50_ns": r.hist.value_at_quantile(0.5),
            "p90_ns": r.hist.value_at_quantile(0.9),
            "p99_ns": r.hist.value_at_quantile(0.99),
            "p999_ns": r.hist.value_at_quantile(0.999),
            "max_ns": r.hist.max(),
        })).collect::<Vec<_>>(),
    })
}

/// The human table of a run.
pub fn to_table(opts: &DispatchOptions, rows: &[Row]) -> String {
    let m = machine(opts.workers);
    let mut o = format!(
        "molt bench dispatch: {} (payload {} B{}{})\nmachine: {} ({} CPUs), kernel {}, {} workers, spin before park {} us\n\n",
        opts.module.display(),
        opts.payload,
        opts.rate.map(|r| format!(", fixed rate {r}/s")).unwrap_or_default(),
        if opts.pin { ", pinned" } else { "" },
        m["cpu"].as_str().unwrap_or(""),
        m["cpus"],
        m["kernel"].as_str().unwrap_or(""),
        m["workers"],
        m["spin_before_park_us"]
    );
    o += "mechanism           samples        p50        p90        p99      p99.9        max    events/s\n";
    let f = |ns: u64| {
        if ns >= 10_000_000 {
            format!("{:.1}ms", ns as f64 / 1e6)
        } else if ns >= 10_000 {
            format!("{:.1}us", ns as f64 / 1e3)
        } else {
            format!("{ns}ns")
        }
    };
    for r in rows {
        let h = &r.hist;
        o += &format!(
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11.0}\n",
            r.mechanism,
            h.len(),
            f(h.value_at_quantile(0.5)),
            f(h.value_at_quantile(0.9)),
            f(h.value_at_quantile(0.99)),
            f(h.value_at_quantile(0.999)),
            f(h.max()),
            r.throughput
        );
    }
    o
}

/// `molt bench swap`: reload request to first event on the new version,
/// alternating between two copies of the module file (distinct by trailing
/// bytes, as two builds would be).
pub fn swap(module: &Path, count: usize) -> BenchResult<Value> {
    use crate::module::{FailurePolicy, ModuleConfig, SwapMode};
    if !module.exists() {
        return Err(format!("module file {}: not found", module.display()));
    }
    let scratch = ScratchDir::new("molt-bench-swap");
    let dir = scratch.0.clone();
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let files: Vec<PathBuf> = (0..2)
        .map(|n| {
            let p = dir.join(format!("v{n}.so"));
            std::fs::copy(module, &p).map_err(|e| e.to_string())?;
            let mut f = std::fs::OpenOptions::new().append(true).open(&p).map_err(|e| e.to_string())?;
            f.write_all(format!("\0molt-bench-swap-{n}\0").as_bytes()).map_err(|e| e.to_string())?;
            Ok(p)
        })
        .collect::<BenchResult<_>>()?;
    let rt = Runtime::start(RuntimeConfig { workers: 2, run_dir: dir.join("run"), ..RuntimeConfig::default() })
        .map_err(|e| e.to_string())?;
    let probe = rt.load(&ModuleSpec::new(module)).map_err(|e| format!("refused: {e}"))?;
    let name = probe.meta().name.clone();
    drop(probe);
    let cfg = |p: &Path| {
        vec![ModuleConfig {
            name: name.clone(),
            path: p.to_owned(),
            sha256: None,
            mode: SwapMode::Drain,
            failure_policy: FailurePolicy::Restart,
            config: vec![],
            origin: "molt bench swap".into(),
        }]
    };
    rt.reload(&cfg(&files[0])).map_err(|e| e.to_string())?;
    // A continuation of the first version: its events are in flight while
    // later versions are swapped in (drain mode keeps it on its version).
    let inflight = rt.spawn(&rt.active(&name).ok_or("no active version")?, 0, 0).map_err(|(_, e)| e)?;
    let round_trip = |rt: &Runtime| -> BenchResult<Duration> {
        let t = Instant::now();
        rt.send(inflight, 9, b"x").map_err(|(_, e)| e)?;
        loop {
            let r = rt
                .next_reply(Duration::from_secs(5))
                .ok_or("the module did not answer within 5 s (round trips need a module that answers messages)")?;
            if r.from == inflight && r.tag == 9 {
                return Ok(t.elapsed());
            }
        }
    };
    let mut steady = hist();
    for _ in 0..2000 {
        record(&mut steady, round_trip(&rt)?);
    }
    let (mut to_first, mut reload) = (hist(), hist());
    let mut during = hist();
    for s in 1..=count {
        let t = Instant::now();
        rt.reload(&cfg(&files[s % 2])).map_err(|e| format!("swap {s}: {e}"))?;
        record(&mut reload, t.elapsed());
        let v = rt.active(&name).ok_or("no active version")?;
        let c = rt.spawn(&v, 1, 0).map_err(|(_, e)| e)?;
        rt.send(c, 7, b"first").map_err(|(_, e)| e)?;
        loop {
            let r = rt
                .next_reply(Duration::from_secs(5))
                .ok_or("the new version did not answer within 5 s (round trips need a module that answers messages)")?;
            if r.from == c {
                break;
            }
        }
        record(&mut to_first, t.elapsed());
        let _ = rt.destroy(c);
        // Events in flight right after the swap, on the old version.
        for _ in 0..20 {
            record(&mut during, round_trip(&rt)?);
        }
    }
    rt.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    let q = |h: &Histogram<u64>| json!({"p50_ns": h.value_at_quantile(0.5), "p99_ns": h.value_at_quantile(0.99), "max_ns": h.max(), "samples": h.len()});
    Ok(json!({
        "module": module,
        "swaps": count,
        "machine": machine(2),
        "to_first_event": q(&to_first),
        "reload_call": q(&reload),
        "in_flight_steady": q(&steady),
        "in_flight_after_swaps": q(&during),
    }))
}

/// `molt bench hooks`: what a module costs an HTTP transaction on the hook
/// path. In process on one worker, with no socket: a `GET /` through a
/// chain of the module alone (its continuation, the hooks it declares,
/// TXN_END and END), each transaction from a fresh copy of the request,
/// next to the same transaction with no module; rounds alternate the two.
pub fn hooks(
    module: &Path,
    config: Vec<(String, String)>,
    groups: Vec<String>,
    transactions: u64,
) -> BenchResult<Value> {
    if !module.exists() {
        return Err(format!("module file {}: not found", module.display()));
    }
    let scratch = ScratchDir::new("molt-bench-hooks");
    let state = crate::runtime::StateConfig { path: Some(scratch.0.join("state.molt")), size: 8 << 20, reset: false };
    let rt =
        Runtime::start(RuntimeConfig { workers: 1, run_dir: scratch.0.join("run"), state, ..RuntimeConfig::default() })
            .map_err(|e| e.to_string())?;
    let spec = ModuleSpec { config, ..ModuleSpec::new(module) };
    let v = rt.load(&spec).map_err(|e| format!("refused: {e}"))?;
    let name = v.meta().name.clone();
    let run = |mods: Vec<crate::module::VersionRef>, n: u64| -> BenchResult<Duration> {
        let groups = groups.clone();
        rt.on_worker(0, move |w| crate::http::hook_path_bench(w, &mods, n, true, &groups)).map_err(|(_, e)| e)
    };
    let n = transactions.max(1);
    run(vec![], (n / 10).max(1))?;
    run(vec![v.clone()], (n / 10).max(1))?;
    let (mut bare, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        bare.push(run(vec![], n)?.as_nanos() as f64 / n as f64);
        with.push(run(vec![v.clone()], n)?.as_nanos() as f64 / n as f64);
    }
    let failures: u64 = rt.total(|s| &s.errors);
    drop(v);
    rt.shutdown();
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let (b, w) = (median(&mut bare), median(&mut with));
    Ok(json!({
        "module": name,
        "file": module,
        "machine": machine(1),
        "transactions_per_round": n,
        "rounds": 5,
        "no_module_ns": b,
        "with_module_ns": w,
        "module_ns": w - b,
        "hook_failures": failures,
    }))
}

/// The human table of a hooks run.
pub fn hooks_table(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut o = format!(
        "molt bench hooks: {} ({}), {} transactions per round, median of {} rounds\n",
        v["module"].as_str().unwrap_or("?"),
        v["file"].as_str().unwrap_or("?"),
        v["transactions_per_round"],
        v["rounds"]
    );
    o += &format!("  a transaction with no module      {:>9.1} ns\n", f("no_module_ns"));
    o += &format!("  the same through the module       {:>9.1} ns\n", f("with_module_ns"));
    o += &format!("  the module's cost per transaction {:>9.1} ns\n", f("module_ns"));
    if v["hook_failures"].as_u64().unwrap_or(0) > 0 {
        o += &format!("  its hooks failed {} times: the cost above includes failing\n", v["hook_failures"]);
    }
    o
}

/// The human table of a swap run.
pub fn swap_table(v: &Value) -> String {
    let row = |k: &str| {
        let x = &v[k];
        format!(
            "{:<22} p50 {:>9.1} us   p99 {:>9.1} us   max {:>9.1} us",
            k,
            x["p50_ns"].as_u64().unwrap_or(0) as f64 / 1e3,
            x["p99_ns"].as_u64().unwrap_or(0) as f64 / 1e3,
            x["max_ns"].as_u64().unwrap_or(0) as f64 / 1e3
        )
    };
    format!(
        "molt bench swap: {} ({} swaps)\n{}\n{}\n{}\n{}",
        v["module"].as_str().unwrap_or(""),
        v["swaps"],
        row("to_first_event"),
        row("reload_call"),
        row("in_flight_steady"),
        row("in_flight_after_swaps")
    )
}

/// A scratch directory under the system temp dir, `<tag>-<pid>`, removed
/// when dropped (so a failed bench leaves nothing behind).
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> ScratchDir {
        ScratchDir(std::env::temp_dir().join(format!("{tag}-{}", std::process::id())))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
