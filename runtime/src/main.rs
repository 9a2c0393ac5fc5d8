//! The `molt` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use molt_runtime::config::Config;
use molt_runtime::ctl::{ConfigSource, ControlServer, Joiner, Upgrader, client};
use molt_runtime::host::Host;
use molt_runtime::module::registry::RegistrySettings;
use molt_runtime::module::{Loader, ModuleSpec};
use molt_runtime::runtime::Inherited;
use molt_runtime::{Runtime, RuntimeConfig};

#[derive(Parser)]
#[command(
    name = "molt",
    version,
    about = "A shared-memory actor runtime whose handler modules are swapped while it serves"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the runtime: load the modules of the config (or of the built-in
    /// default), serve the control socket, reload on SIGHUP, stop on
    /// SIGINT or SIGTERM.
    Run {
        /// The config file (TOML, see docs/config.md). Without it, the
        /// built-in default: the example modules next to the molt binary.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Stop by itself after this many seconds.
        #[arg(long = "for", value_name = "SECS")]
        run_for: Option<u64>,
        /// Discard the state file's contents and start with an empty region.
        #[arg(long)]
        reset_state: bool,
        /// Listen on this address instead of the first [[http]] listener's
        /// (the built-in default's is 127.0.0.1:8080; port 0 picks a free one).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
    },
    /// Measure dispatch latency of a module next to other mechanisms, or swap latency.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// (internal) The RPC child of `molt bench dispatch`.
    #[command(hide = true)]
    BenchServe { module: PathBuf, socket: PathBuf, config: Vec<String> },
    /// (internal) The child process of an isolated module.
    #[command(hide = true)]
    ModuleHost {
        #[arg(long)]
        segment: String,
        #[arg(long)]
        module: PathBuf,
        #[arg(long = "run-dir")]
        run_dir: PathBuf,
        #[arg(long = "config")]
        config: Vec<String>,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long = "wake")]
        wake: Vec<String>,
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// (internal) The per-call child of `molt bench dispatch --process-per-call`.
    #[command(hide = true)]
    BenchOnce { module: PathBuf, config: Vec<String> },
    /// Talk to a running molt through its control socket.
    Ctl {
        /// status, reload, rollback, upgrade or metrics.
        #[arg(value_parser = ["status", "reload", "rollback", "upgrade", "metrics"])]
        cmd: String,
        /// upgrade: the new binary (default: the file now at the path the
        /// running molt was started from).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Print the JSON reply instead of a table.
        #[arg(long)]
        json: bool,
        /// The control socket (default: ctl.sock in the run directory).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Find the run directory from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load a module the way the runtime does, send it one message, unload it,
    /// and report what happened (handshake, init, reply, unmap).
    Check {
        /// The module's shared library.
        module: PathBuf,
        /// Config entries for init, as key=value.
        #[arg(value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The message payload to send.
        #[arg(long, default_value = "molt check")]
        message: String,
        /// The message tag.
        #[arg(long, default_value_t = 1)]
        tag: u64,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Dispatch latency of a module, next to a direct call, a cross-worker
    /// round trip, RPC to a child process, and (opt-in) a process per call.
    Dispatch {
        /// The module's library.
        #[arg(long)]
        module: PathBuf,
        /// Module config entries, as key=value (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Events per mechanism, after warm-up.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Stop each mechanism after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// Payload bytes per event.
        #[arg(long, default_value_t = 16)]
        payload: usize,
        /// Workers of the runtime.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Fixed rate (events/s) for the round-trip mechanisms; latency
        /// counts from each event's intended send time.
        #[arg(long)]
        rate: Option<u64>,
        /// Also start a process per call (slow: at most 50 calls).
        #[arg(long)]
        process_per_call: bool,
        /// Pin worker i to CPU i, and the measuring thread to the next CPU.
        #[arg(long)]
        pin: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What a module costs an HTTP transaction on the hook path (in
    /// process, one worker, no socket), next to a transaction with no module.
    Hooks {
        /// The module's library.
        #[arg(long)]
        module: PathBuf,
        /// Module config entries, as key=value (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The listener's upstream groups, comma-separated (a module that
        /// selects one by name needs it to exist).
        #[arg(long, value_delimiter = ',', default_value = "up")]
        groups: Vec<String>,
        /// Transactions per round (five rounds of each).
        #[arg(long, default_value_t = 200_000)]
        transactions: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Swap latency: reload request to the first event handled by the new
    /// version, over COUNT swaps.
    Swap {
        /// The module's library.
        #[arg(long)]
        module: PathBuf,
        /// Swaps.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn pairs(config: &[String]) -> Result<Vec<(String, String)>, String> {
    config
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or(format!("config entry {c:?} is not KEY=VALUE"))
        })
        .collect()
}

fn bench(what: BenchCmd) -> ExitCode {
    let molt = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("molt"));
    let result = match what {
        BenchCmd::Dispatch {
            module,
            config,
            events,
            duration,
            payload,
            workers,
            rate,
            process_per_call,
            pin,
            json,
        } => pairs(&config).and_then(|config| {
            let opts = molt_runtime::bench::DispatchOptions {
                module,
                config,
                events: events.max(1),
                duration: duration.map(Duration::from_secs_f64),
                payload,
                workers,
                rate,
                process_per_call,
                pin,
                progress: !json,
                molt,
            };
            let rows = molt_runtime::bench::dispatch(&opts)?;
            if json {
                println!("{}", molt_runtime::bench::to_json(&opts, &rows));
            } else {
                eprint!("\r");
                print!("{}", molt_runtime::bench::to_table(&opts, &rows));
            }
            Ok(())
        }),
        BenchCmd::Hooks { module, config, groups, transactions, json } => pairs(&config)
            .and_then(|config| molt_runtime::bench::hooks(&module, config, groups, transactions))
            .map(|v| {
                if json {
                    println!("{v}");
                } else {
                    print!("{}", molt_runtime::bench::hooks_table(&v));
                }
            }),
        BenchCmd::Swap { module, count, json } => molt_runtime::bench::swap(&module, count.max(1)).map(|v| {
            if json {
                println!("{v}");
            } else {
                println!("{}", molt_runtime::bench::swap_table(&v));
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("molt bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOLT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Check { module, config, message, tag } => check(module, config, message, tag),
        Command::Run { config, run_for, reset_state, http } => run(config, run_for, reset_state, http),
        Command::Ctl { cmd, json, socket, config, binary } => ctl(&cmd, json, socket, config, binary),
        Command::Bench { what } => bench(what),
        Command::BenchServe { module, socket, config } => {
            match pairs(&config).and_then(|c| molt_runtime::bench::serve(&module, &socket, c)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("molt bench-serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ModuleHost { segment, module, run_dir, config, workers, wake, sandbox, state } => {
            let sandbox = match sandbox.map(|s| serde_json::from_str(&s)).transpose() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("molt module-host: --sandbox: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let run = |config| {
                let args = molt_runtime::isolate::HostArgs {
                    os_id: &segment,
                    module: &module,
                    run_dir: &run_dir,
                    config,
                    workers,
                    wake,
                    sandbox,
                    state,
                };
                molt_runtime::isolate::host_main(args, &molt_runtime::http::isolated::serve_hook)
            };
            match pairs(&config).and_then(run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("molt module-host: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::BenchOnce { module, config } => {
            match pairs(&config).and_then(|c| molt_runtime::bench::once(&module, c)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("molt bench-once: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn module_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("."))
}

fn source_of(config: Option<PathBuf>) -> ConfigSource {
    match config {
        Some(p) => ConfigSource::File(p),
        None => ConfigSource::Builtin(module_dir()),
    }
}

/// The listening sockets systemd passed (socket activation), by listener
/// key: each matched to the `[[http]]` or `[[tcp]]` listener of its
/// address, and shared by every worker (one descriptor per worker).
fn systemd_listeners(
    cfg: &Config,
    workers: usize,
) -> Result<std::collections::BTreeMap<String, Vec<std::net::TcpListener>>, String> {
    let mut out = std::collections::BTreeMap::new();
    for fd in molt_runtime::sys::sd::listen_fds()? {
        let l = std::net::TcpListener::from(fd);
        let addr = l.local_addr().map_err(|e| {
            format!("a LISTEN_FDS descriptor is not a TCP listening socket ({e}): molt takes TCP listeners only")
        })?;
        let key = cfg
            .http
            .iter()
            .find(|s| s.listen == addr)
            .map(|s| format!("http:{}", s.name))
            .or_else(|| cfg.tcp.iter().position(|r| r.listen == addr).map(|i| format!("tcp:{i}")))
            .ok_or_else(|| {
                format!("systemd passed a socket on {addr}, which no [[http]] or [[tcp]] listener of the config has: make ListenStream= and listen agree")
            })?;
        let mut per_worker = Vec::with_capacity(workers);
        for _ in 1..workers {
            per_worker.push(l.try_clone().map_err(|e| format!("{addr}: {e}"))?);
        }
        per_worker.push(l);
        tracing::info!(%addr, listener = %key, "listening socket from systemd");
        if out.insert(key.clone(), per_worker).is_some() {
            return Err(format!("systemd passed two sockets for {key}"));
        }
    }
    Ok(out)
}

/// Tell the service manager (`NOTIFY_SOCKET`, a `Type=notify` unit) `state`.
fn notify(state: &str) {
    if let Err(e) = molt_runtime::sys::sd::notify(state) {
        tracing::warn!("cannot notify the service manager ({state:?}): {e}");
    }
}

/// A start that failed: said, and told to the running molt when this
/// process was started to take over from it.
fn fail(joiner: Option<&Joiner>, step: &str, msg: String) -> ExitCode {
    eprintln!("molt: {msg}");
    if let Some(j) = joiner {
        j.failed(step, &msg);
    }
    ExitCode::FAILURE
}

/// The arguments a new binary gets on upgrade: this process's own, without
/// `--reset-state` (the new process takes the state over, never resets it).
fn upgrade_args() -> Vec<std::ffi::OsString> {
    std::env::args_os().skip(1).filter(|a| a != "--reset-state").collect()
}

fn run(
    config: Option<PathBuf>,
    run_for: Option<u64>,
    reset_state: bool,
    http: Option<std::net::SocketAddr>,
) -> ExitCode {
    // Where this binary is now: the default new binary of an upgrade (the
    // file at this path then, which a deploy may have replaced).
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("molt"));
    // Started by a running molt to take over from it?
    let joiner = match Joiner::from_env() {
        None => None,
        Some(Ok(j)) => Some(j),
        Some(Err(e)) => {
            eprintln!("molt: binary upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every line this process logs while it takes over carries the id.
    let upgrade_span = joiner
        .as_ref()
        .map(|j| tracing::info_span!("upgrade", upgrade_id = %j.id(), new_pid = std::process::id()).entered());
    if joiner.is_some() && reset_state {
        return fail(
            joiner.as_ref(),
            "start",
            "--reset-state is refused for a binary upgrade: the new process takes the state over".into(),
        );
    }
    let source = source_of(config);
    let digest = source.digest();
    let mut cfg = match source.read() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("molt: {e}");
            if let Some(j) = &joiner {
                j.failed("config", &e.to_string());
            }
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = http {
        match cfg.http.first_mut() {
            Some(site) => site.listen = addr,
            None => {
                eprintln!("molt: --http {addr}: {} has no [[http]] listener to move", source.describe());
                return ExitCode::from(2);
            }
        }
    }
    let r = &cfg.runtime;
    let rc = RuntimeConfig {
        workers: if r.workers == 0 { RuntimeConfig::default().workers } else { r.workers },
        spin: Duration::from_micros(r.spin_us),
        run_dir: cfg.run_dir(),
        max_continuations_per_worker: r.max_continuations_per_worker,
        registry: RegistrySettings {
            max_versions_per_module: r.max_versions_per_module,
            drain_deadline: cfg.drain_deadline(),
            dynamic_reload: r.dynamic_reload,
        },
        state: molt_runtime::runtime::StateConfig {
            path: r.state_file.clone(),
            size: r.state_size_mb << 20,
            reset: reset_state,
        },
        tcp: cfg.tcp.clone(),
        http: cfg.http.clone(),
        pin_workers: r.pin_workers,
        isolated: cfg.isolated.clone(),
        molt_bin: None,
    };
    let digest = match digest {
        Ok(d) => d,
        Err(e) => return fail(joiner.as_ref(), "config", e),
    };
    let (inherited, ctl_inherited, admin_inherited, history) = match &joiner {
        None => match systemd_listeners(&cfg, rc.workers.clamp(1, molt_runtime::cont::id::MAX_WORKERS as usize)) {
            Ok(listeners) => (Inherited { listeners, ..Inherited::default() }, None, None, Vec::new()),
            Err(e) => {
                eprintln!("molt: socket activation: {e}");
                return ExitCode::from(2);
            }
        },
        Some(j) => match j.hello(digest.clone(), rc.workers.clamp(1, molt_runtime::cont::id::MAX_WORKERS as usize)) {
            Ok(h) => {
                tracing::info!(upgrade_id = %h.id, "binary upgrade: descriptors received; starting paused");
                (h.inherited, h.ctl, h.admin, h.history)
            }
            Err(e) => {
                eprintln!("molt: binary upgrade: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let rt = match Runtime::start_with(rc.clone(), inherited) {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                joiner.as_ref(),
                "start",
                format!("cannot start (run directory {}): {e}", rc.run_dir.display()),
            );
        }
    };
    if let Err(e) = rt.reload(&cfg.modules) {
        if matches!(source, ConfigSource::Builtin(_)) && joiner.is_none() {
            eprintln!(
                "molt: the built-in default loads the example modules next to the binary: build them with `cargo build --release --workspace`"
            );
        }
        return fail(joiner.as_ref(), "modules", format!("loading the modules of {} failed: {e}", source.describe()));
    }
    rt.shared().set_config_digest(digest);
    let upgrader = Arc::new(Upgrader::new(
        rt.shared().clone(),
        source.clone(),
        exe,
        upgrade_args(),
        molt_runtime::ctl::upgrade::Timeouts {
            ready: Duration::from_millis(cfg.runtime.upgrade_ready_timeout_ms),
            ..Default::default()
        },
        history,
    ));
    let ctl =
        match ControlServer::start_with(rt.shared().clone(), source.clone(), ctl_inherited, Some(upgrader.clone())) {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    joiner.as_ref(),
                    "start",
                    format!("cannot open the control socket in {}: {e}", rc.run_dir.display()),
                );
            }
        };
    upgrader.set_ctl(ctl.handoff());
    let admin = match cfg.admin.map(|a| {
        molt_runtime::ctl::AdminServer::start_with(rt.shared().clone(), a, admin_inherited, Some(upgrader.clone()))
    }) {
        None => None,
        Some(Ok(a)) => {
            upgrader.set_admin(a.handoff());
            Some(a)
        }
        Some(Err(e)) => return fail(joiner.as_ref(), "start", format!("cannot start the admin listener: {e}")),
    };
    // Before the banner: a supervisor may signal as soon as it reads it.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR2,
    ]);
    let mut signals = match signals {
        Ok(s) => s,
        Err(e) => return fail(joiner.as_ref(), "start", format!("cannot install signal handlers: {e}")),
    };
    if let Some(j) = joiner {
        // Not ready while an isolated module's child is not running: the old
        // process serves on instead of handing over to a molt without it.
        if let Some(s) = rt.shared().isolated().iter().map(|s| s.status()).find(|s| s.state != "running") {
            let why = format!(
                "isolated module {} is {} ({})",
                s.module,
                s.state,
                s.last_exit.unwrap_or_else(|| "not ready".into())
            );
            return fail(Some(&j), "modules", why);
        }
        // Ready: the old process gives up the writer role and says go.
        if let Err(e) = j.ready(Duration::from_secs(60)) {
            eprintln!("molt: binary upgrade: {e}");
            return ExitCode::FAILURE;
        }
        if let Err(e) = rt.shared().take_over() {
            return fail(Some(&j), "takeover", e);
        }
        ctl.resume();
        if let Some(a) = &admin {
            a.resume();
        }
        if let Err(e) = j.took() {
            tracing::warn!(upgrade_id = %j.id(), "binary upgrade: {e}");
        }
        tracing::info!("binary upgrade: this process took over");
        let u = upgrader.clone();
        let _ = std::thread::Builder::new().name("molt-upgrade".into()).spawn(move || {
            match j.record(Duration::from_secs(30)) {
                Ok(r) => u.remember(&r),
                Err(e) => tracing::warn!("binary upgrade: {e}"),
            }
        });
    }
    drop(upgrade_span);
    let names: Vec<String> = rt
        .shared()
        .registry()
        .active()
        .map(|g| g.entries.iter().map(|e| format!("{} {}", e.cfg.name, e.version.meta().version)).collect())
        .unwrap_or_default();
    println!("molt {} running: {} workers, modules: {}", env!("CARGO_PKG_VERSION"), rt.workers(), names.join(", "));
    for (route, addr) in cfg.tcp.iter().zip(rt.tcp_addrs()) {
        println!(
            "tcp proxy: {addr} -> {}",
            route.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    for (site, addr) in cfg.http.iter().zip(rt.http_addrs()) {
        let routes: Vec<String> = site
            .routes
            .iter()
            .map(|r| {
                let to = r.upstream.map_or("no upstream".to_owned(), |g| site.groups[g].0.clone());
                format!("{}{} -> [{}] {to}", r.host.as_deref().unwrap_or(""), r.path, r.modules.join(", "))
            })
            .collect();
        println!("http: http://{addr}/  ({})", routes.join("; "));
    }
    if let Some(a) = &admin {
        println!("admin: http://{}/metrics, /healthz, /readyz", a.addr());
    }
    println!("control socket: {}", ctl.path().display());
    println!("status:  molt ctl status --socket {}", ctl.path().display());
    println!("reload:  molt ctl reload --socket {}   (or kill -HUP {})", ctl.path().display(), std::process::id());
    println!("upgrade: molt ctl upgrade --socket {}   (or kill -USR2 {})", ctl.path().display(), std::process::id());
    println!("stop:    Ctrl-C (or kill {})", std::process::id());
    // A supervisor's unit may now count this process as its main one.
    notify(&format!("MAINPID={}\nREADY=1", std::process::id()));

    let deadline = run_for.map(|s| Instant::now() + Duration::from_secs(s));
    'serve: loop {
        for sig in signals.pending() {
            match sig {
                signal_hook::consts::SIGHUP => match molt_runtime::ctl::server::reload(rt.shared(), &source) {
                    Ok(_) => tracing::info!("SIGHUP reload published"),
                    Err(e) => tracing::warn!("SIGHUP reload refused: {e}"),
                },
                signal_hook::consts::SIGUSR2 => {
                    let u = upgrader.clone();
                    // On a thread of its own: a stop signal is still heard meanwhile.
                    let _ = std::thread::Builder::new().name("molt-upgrade".into()).spawn(move || {
                        // Its outcome is logged (and in status) either way.
                        let _ = u.upgrade(None);
                    });
                }
                _ => break 'serve,
            }
        }
        if upgrader.handed_over() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !upgrader.handed_over() {
        notify("STOPPING=1");
    }
    if upgrader.handed_over() {
        // The new process accepts; this one finishes what it has.
        let id = upgrader.history().last().map(|r| r.id.clone()).unwrap_or_default();
        let _span = tracing::info_span!("upgrade", upgrade_id = %id).entered();
        rt.shared().wind_down();
        let until = Instant::now() + cfg.drain_deadline();
        let mut open = rt.shared().open_connections();
        while open > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            open = rt.shared().open_connections();
        }
        if open > 0 {
            tracing::warn!(open, "binary upgrade: the drain deadline passed; the connections left are closed");
        } else {
            tracing::info!("binary upgrade: every connection finished");
        }
    }
    drop(admin);
    drop(ctl);
    let reports = rt.shutdown();
    let pinned = reports.iter().filter(|r| r.pinned.is_some()).count();
    println!("molt stopped: {} module versions unloaded, {pinned} pinned", reports.len());
    ExitCode::SUCCESS
}

fn ctl(cmd: &str, json: bool, socket: Option<PathBuf>, config: Option<PathBuf>, binary: Option<PathBuf>) -> ExitCode {
    let socket = match socket {
        Some(s) => s,
        None => {
            let cfg = match config.as_deref().map(Config::load).transpose() {
                Ok(c) => c.unwrap_or_else(|| Config::builtin(&module_dir())),
                Err(e) => {
                    eprintln!("molt ctl: {e}");
                    return ExitCode::from(2);
                }
            };
            cfg.run_dir().join("ctl.sock")
        }
    };
    let mut req = serde_json::json!({ "cmd": cmd });
    if let Some(b) = binary {
        // The running process resolves a relative path against its own
        // directory: make it this shell's.
        let b = std::path::absolute(&b).unwrap_or(b);
        req["binary"] = serde_json::Value::String(b.display().to_string());
    }
    match client::request_value(&socket, &req) {
        Err(e) => {
            eprintln!("molt ctl {cmd}: {e}");
            ExitCode::FAILURE
        }
        Ok(v) => {
            if json {
                println!("{v}");
            } else {
                match cmd {
                    "status" => print!("{}", client::render_status(&v)),
                    "metrics" => print!("{}", v.as_str().unwrap_or_default()),
                    _ => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn check(module: PathBuf, config: Vec<String>, message: String, tag: u64) -> ExitCode {
    let mut pairs = Vec::new();
    for c in config {
        match c.split_once('=') {
            Some((k, v)) => pairs.push((k.to_owned(), v.to_owned())),
            None => {
                eprintln!("molt check: config entry {c:?} is not KEY=VALUE");
                return ExitCode::from(2);
            }
        }
    }
    let run_dir = std::env::temp_dir().join(format!("molt-check-{}", std::process::id()));
    if let Err(e) = molt_runtime::sys::files::ensure_private_dir(&run_dir) {
        eprintln!("molt check: {e}");
        return ExitCode::FAILURE;
    }
    // A state file like `molt run`'s (persistent), removed with the run dir.
    let state = match molt_runtime::state::Region::open_file(&run_dir.join("state.molt"), 8 << 20, false) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("molt check: {e}");
            let _ = std::fs::remove_dir_all(&run_dir);
            return ExitCode::FAILURE;
        }
    };
    let loader = match Loader::new(Arc::new(Host::new(state)), &run_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("molt check: cannot create {}: {e}", run_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let spec = ModuleSpec { config: pairs, ..ModuleSpec::new(&module) };
    let code = match loader.load(&spec) {
        Err(e) => {
            eprintln!("refused: {e}");
            ExitCode::FAILURE
        }
        Ok(v) => {
            let m = v.meta();
            println!("module      {} {} (version number {})", m.name, m.version, m.version_number);
            println!("state       schema {}", m.state_schema);
            println!(
                "flags       {:#x}, required host caps {:#x}, module caps {:#x}",
                m.flags, m.required_host_caps, m.module_caps
            );
            let cb = &m.callbacks;
            println!(
                "callbacks   init handle_event{}{}{}{}",
                if cb.migrate.is_some() { " migrate" } else { "" },
                if cb.adopt.is_some() { " adopt" } else { "" },
                if cb.drain.is_some() { " drain" } else { "" },
                if cb.fini.is_some() { " fini" } else { "" },
            );
            let mut code = ExitCode::SUCCESS;
            match v.call_direct(tag, message.as_bytes()) {
                Ok(replies) if replies.is_empty() => println!("message     handled, no reply"),
                Ok(replies) => {
                    for r in replies {
                        println!("reply       tag {}: {}", r.tag, String::from_utf8_lossy(&r.data));
                    }
                }
                Err(e) => {
                    println!("message     failed: {e}");
                    code = ExitCode::FAILURE;
                }
            }
            if !check_http(&v) {
                code = ExitCode::FAILURE;
            }
            let report = v.unload();
            match (&report.pinned, report.unmapped) {
                (None, true) => println!("unload      unmapped, runtime copy removed"),
                (Some(p), _) => println!("unload      PINNED: {p}"),
                (None, false) => println!("unload      still mapped"),
            }
            code
        }
    };
    let _ = std::fs::remove_dir_all(&run_dir);
    code
}

/// Send one synthetic request (`GET /molt-check?probe=1`, Host
/// `check.local`) through the module's HTTP hooks and print what each did:
/// REQUEST and UPSTREAM (unless it answered), RESPONSE over its answer or a
/// synthetic upstream 200, TXN_END. false when a hook failed.
fn check_http(v: &molt_runtime::module::ModuleVersion) -> bool {
    use molt_abi::ffi::*;
    use molt_runtime::http::head::{Body, Header, RequestHead, ResponseHead};
    use molt_runtime::http::txn::{TxnData, View};
    use std::cell::RefCell;
    let name = v.meta().name.clone();
    let h = |n: &str, v: &str| Header::new(n, v.as_bytes());
    let site = molt_runtime::http::HttpSite {
        name: "check".into(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        routes: vec![molt_runtime::http::HttpRoute {
            name: "check".into(),
            host: None,
            path: "/".into(),
            upstream: Some(0),
            modules: vec![name],
            retry_non_idempotent: false,
        }],
        groups: vec![("default".into(), vec!["127.0.0.1:80".parse().expect("an address")])],
        limits: molt_runtime::http::HttpLimits::default(),
    };
    let req = RequestHead {
        method: "GET".into(),
        target: "/molt-check?probe=1".into(),
        minor: 1,
        headers: vec![h("Host", "check.local"), h("User-Agent", "molt-check")],
        body: Body::None,
        keep_alive: true,
        expect_continue: false,
        host: Some("check.local".into()),
    };
    let sent = req.clone();
    let mut t = TxnData { id: 1, req, route: 0, group: Some(0), answer: None, resp: None, upstream_addr: None };
    let mut ok = true;
    let mut call = |t: &mut TxnData, kind: u32, hook: &str, args: (u64, u64)| {
        let view = View { t: RefCell::new(t), site: &site, peer: "127.0.0.1:40000", kind };
        if let Err(e) = v.call_hook(kind, 1, args, &view) {
            println!("http {hook:<9} failed: {e}");
            ok = false;
        }
    };
    println!("http        GET /molt-check?probe=1, Host check.local, through every hook:");
    call(&mut t, MOLT_EV_HTTP_REQUEST, "request", (0, 0));
    if t.answer.is_none() {
        call(&mut t, MOLT_EV_HTTP_UPSTREAM, "upstream", (0, 0));
    }
    let diff = |before: &[Header], after: &[Header]| -> Vec<String> {
        let text = |x: &Header| format!("{}: {}", x.name, String::from_utf8_lossy(&x.value));
        let mut out: Vec<String> =
            after.iter().filter(|a| !before.contains(a)).map(|a| format!("+ {}", text(a))).collect();
        out.extend(before.iter().filter(|b| !after.contains(b)).map(|b| format!("- {}", text(b))));
        out
    };
    if t.req.target != sent.target {
        println!("http request   target now {}", t.req.target);
    }
    for d in diff(&sent.headers, &t.req.headers) {
        println!("http request   {d}");
    }
    if t.group != Some(0) {
        let g = t.group.map_or("none".to_owned(), |g| site.groups[g].0.clone());
        println!("http upstream  group {g}");
    }
    let synthetic = vec![h("Content-Type", "text/plain"), h("Content-Length", "2")];
    let (status, by) = match &t.answer {
        Some(a) => {
            println!("http answer    {} ({} body bytes) by the module", a.status, a.body.len());
            (a.status, a.by)
        }
        None => {
            t.upstream_addr = site.groups[0].1.first().copied();
            t.resp = Some(ResponseHead {
                status: 200,
                reason: "OK".into(),
                minor: 1,
                headers: synthetic.clone(),
                body: Body::Length(2),
                keep_alive: true,
            });
            println!("http upstream  (none contacted: a synthetic 200 comes back)");
            (200, 0)
        }
    };
    let resp_before = t.answer.as_ref().map_or(synthetic, |a| a.headers.clone());
    call(&mut t, MOLT_EV_HTTP_RESPONSE, "response", (u64::from(status), by));
    let resp_after = match (&t.answer, &t.resp) {
        (Some(a), _) => a.headers.clone(),
        (None, Some(r)) => r.headers.clone(),
        _ => Vec::new(),
    };
    for d in diff(&resp_before, &resp_after) {
        println!("http response  {d}");
    }
    call(&mut t, MOLT_EV_HTTP_TXN_END, "txn_end", (u64::from(status), 2));
    if ok {
        println!("http hooks     request, upstream, response and txn_end returned MOLT_OK");
    }
    ok
}
