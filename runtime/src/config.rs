//! The runtime's config file (TOML), its defaults, and its errors.
//!
//! Every key and its default is documented in `docs/config.md`. Errors name
//! the file, the line and the key, and say what is accepted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use crate::module::spec::{FailurePolicy, IsolatedConfig, ModuleConfig, SwapMode};

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Worker threads; 0 means one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// The run directory: runtime copies, kept copies, the control socket.
    pub run_dir: Option<PathBuf>,
    /// Microseconds an idle worker spins before it parks.
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
    /// Milliseconds a draining version's continuations get before they are ended.
    #[serde(default = "default_drain_deadline_ms")]
    pub drain_deadline_ms: u64,
    /// Loaded versions allowed per module (active, previous, draining).
    #[serde(default = "default_max_versions")]
    pub max_versions_per_module: usize,
    /// Whether reloads are allowed at all.
    #[serde(default = "default_true")]
    pub dynamic_reload: bool,
    /// Continuation slots per worker.
    #[serde(default = "default_max_conts")]
    pub max_continuations_per_worker: u32,
    /// The state file; default `<run_dir>/state.molt` (`/dev/shm/...` is the fast choice).
    pub state_file: Option<PathBuf>,
    /// Size of a newly created state file, in MiB.
    #[serde(default = "default_state_mb")]
    pub state_size_mb: u64,
    /// Pin worker `i` to CPU `i`.
    #[serde(default)]
    pub pin_workers: bool,
    /// Milliseconds a binary upgrade's new process gets to load its
    /// modules and say ready before it is killed.
    #[serde(default = "default_upgrade_ready_ms")]
    pub upgrade_ready_timeout_ms: u64,
}

fn default_upgrade_ready_ms() -> u64 {
    30_000
}

fn default_state_mb() -> u64 {
    64
}

fn default_spin_us() -> u64 {
    50
}
fn default_drain_deadline_ms() -> u64 {
    30_000
}
fn default_max_versions() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_max_conts() -> u32 {
    1 << 18
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            workers: 0,
            run_dir: None,
            spin_us: default_spin_us(),
            drain_deadline_ms: default_drain_deadline_ms(),
            max_versions_per_module: default_max_versions(),
            dynamic_reload: true,
            max_continuations_per_worker: default_max_conts(),
            state_file: None,
            state_size_mb: default_state_mb(),
            upgrade_ready_timeout_ms: default_upgrade_ready_ms(),
            pin_workers: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    name: Spanned<String>,
    path: Spanned<PathBuf>,
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    mode: SwapMode,
    #[serde(default)]
    failure_policy: FailurePolicy,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    isolation: Isolation,
    hook_timeout_ms: Option<u64>,
    sandbox: Option<crate::module::spec::Sandbox>,
}

/// Where a module's code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// In molt's process (the default): the fastest; its crash is molt's.
    #[default]
    None,
    /// In a supervised child process over shared-memory rings
    /// (`docs/isolation.md`): its crash is the child's.
    Process,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    listen: Spanned<String>,
    #[serde(default)]
    upstreams: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    modules: Vec<String>,
    handler: Option<String>,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    idle_timeout_ms: u64,
    #[serde(default = "default_retry_ms")]
    retry_after_ms: u64,
    #[serde(default = "default_max_conns")]
    max_connections: usize,
}

fn default_connect_ms() -> u64 {
    3_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_retry_ms() -> u64 {
    5_000
}
fn default_max_conns() -> usize {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    name: Option<String>,
    listen: Spanned<String>,
    upstreams: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    max_head_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_body_bytes: Option<u64>,
    request_timeout_ms: Option<u64>,
    keepalive_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    upstream_timeout_ms: Option<u64>,
    retry_after_ms: Option<u64>,
    max_connections: Option<usize>,
    pool_per_server: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    host: Option<String>,
    #[serde(default = "default_path")]
    path: String,
    upstream: Option<String>,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    retry_non_idempotent: bool,
}

fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    runtime: RuntimeSection,
    #[serde(default, rename = "modules")]
    modules: Vec<Spanned<RawModule>>,
    #[serde(default)]
    tcp: Vec<RawTcp>,
    #[serde(default)]
    http: Vec<Spanned<RawHttp>>,
    admin: Option<Spanned<RawAdmin>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

/// A whole config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a file, or "built-in default").
    pub source: String,
    /// `[runtime]`.
    pub runtime: RuntimeSection,
    /// `[[modules]]`, in order (those running in molt's process).
    pub modules: Vec<ModuleConfig>,
    /// `[[modules]]` with `isolation = "process"`, in order.
    pub isolated: Vec<IsolatedConfig>,
    /// `[[tcp]]` proxy routes.
    pub tcp: Vec<crate::net::TcpRoute>,
    /// `[[http]]` listeners.
    pub http: Vec<crate::http::HttpSite>,
    /// `[admin] listen`: the admin HTTP listener (`/metrics`, `/healthz`,
    /// `/readyz`); off when absent.
    pub admin: Option<std::net::SocketAddr>,
}

/// A config that cannot be used: the file, line and key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config {file}{}: {message}", if *.line == 0 { String::new() } else { format!(":{line}") })]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// What is wrong and what is accepted.
    pub message: String,
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The line of `key = ...` at or after byte `from` of `src` (the table
/// that holds it starts there); the table's own line when not found.
fn key_line(src: &str, from: usize, key: &str) -> usize {
    let from = from.min(src.len());
    let mut offset = from;
    for l in src[from..].split_inclusive('\n') {
        let t = l.trim_start();
        if t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return line_of(src, offset);
        }
        offset += l.len();
    }
    line_of(src, from)
}

/// Check that the value of `key` is within `lo..=hi`, saying why the bound
/// exists when it is not.
fn bounded<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
    why: &str,
) -> Result<(), (String, String)> {
    if v < lo || v > hi {
        return Err((key.to_owned(), format!("key `{key}`: {v} is out of range {lo}..={hi} ({why})")));
    }
    Ok(())
}

const DAY_MS: u64 = 86_400_000;

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) -> Result<(), String> {
    match v {
        toml::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        toml::Value::Integer(i) => out.push((prefix.to_owned(), i.to_string())),
        toml::Value::Float(f) => out.push((prefix.to_owned(), f.to_string())),
        toml::Value::Boolean(b) => out.push((prefix.to_owned(), b.to_string())),
        toml::Value::Datetime(d) => out.push((prefix.to_owned(), d.to_string())),
        toml::Value::Array(a) => {
            let mut parts = Vec::new();
            for x in a {
                match x {
                    toml::Value::Table(_) | toml::Value::Array(_) => {
                        return Err(format!("key `{prefix}`: arrays may hold only strings, numbers and booleans"));
                    }
                    toml::Value::String(s) => parts.push(s.clone()),
                    other => parts.push(other.to_string()),
                }
            }
            out.push((prefix.to_owned(), parts.join(",")));
        }
        toml::Value::Table(t) => {
            for (k, x) in t {
                flatten(&format!("{prefix}.{k}"), x, out)?;
            }
        }
    }
    Ok(())
}

type ErrFn<'a> = dyn Fn(usize, String) -> ConfigError + 'a;

fn parse_http(
    src: &str,
    h: RawHttp,
    n: usize,
    at: usize,
    modules: &[ModuleConfig],
    isolated: &[IsolatedConfig],
    err: &ErrFn<'_>,
) -> Result<crate::http::HttpSite, ConfigError> {
    let line = line_of(src, at);
    let name = h.name.unwrap_or_else(|| format!("http{n}"));
    let listen = h.listen.get_ref().parse().map_err(|_| {
        err(
            line_of(src, h.listen.span().start),
            format!(
                "key `http.listen` of listener {name}: {:?} is not an address like 127.0.0.1:8080",
                h.listen.get_ref()
            ),
        )
    })?;
    let up_line = h.upstreams.as_ref().map_or(line, |u| line_of(src, u.span().start));
    let mut groups = Vec::new();
    let empty = BTreeMap::new();
    for (g, servers) in h.upstreams.as_ref().map_or(&empty, |u| u.get_ref()) {
        let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
        for s in servers {
            addrs.push(s.parse().map_err(|_| {
                err(
                    up_line,
                    format!("key `http.upstreams.{g}` of listener {name}: {s:?} is not an address like 127.0.0.1:9000"),
                )
            })?);
        }
        if addrs.is_empty() {
            return Err(err(up_line, format!("key `http.upstreams.{g}` of listener {name}: the group has no server")));
        }
        groups.push((g.clone(), addrs));
    }
    if h.routes.is_empty() {
        return Err(err(line, format!("listener {name}: at least one [[http.routes]] is needed")));
    }
    let mut routes = Vec::new();
    for (i, r) in h.routes.into_iter().enumerate() {
        let rline = line_of(src, r.span().start);
        let r = r.into_inner();
        let rname = r.name.unwrap_or_else(|| format!("{name}/{i}"));
        if !r.path.starts_with('/') {
            return Err(err(
                rline,
                format!("key `http.routes.path` of route {rname}: {:?} must start with '/'", r.path),
            ));
        }
        let upstream = match &r.upstream {
            None => None,
            Some(u) => Some(groups.iter().position(|(g, _)| g == u).ok_or_else(|| {
                let names: Vec<&str> = groups.iter().map(|(g, _)| g.as_str()).collect();
                err(
                    rline,
                    format!(
                        "key `http.routes.upstream` of route {rname}: no upstream group {u:?} (there are {names:?})"
                    ),
                )
            })?),
        };
        for m in &r.modules {
            if !modules.iter().any(|x| &x.name == m) && !isolated.iter().any(|x| &x.name == m) {
                return Err(err(
                    rline,
                    format!("key `http.routes.modules` of route {rname}: module {m:?} is not declared in [[modules]]"),
                ));
            }
        }
        routes.push(crate::http::HttpRoute {
            name: rname,
            host: r.host,
            path: r.path,
            upstream,
            modules: r.modules,
            retry_non_idempotent: r.retry_non_idempotent,
        });
    }
    let d = crate::http::HttpLimits::default();
    let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
    let limits = crate::http::HttpLimits {
        max_head_bytes: h.max_head_bytes.unwrap_or(d.max_head_bytes),
        max_headers: h.max_headers.unwrap_or(d.max_headers),
        max_body_bytes: h.max_body_bytes.unwrap_or(d.max_body_bytes),
        request_timeout: ms(h.request_timeout_ms, d.request_timeout),
        keepalive_timeout: ms(h.keepalive_timeout_ms, d.keepalive_timeout),
        connect_timeout: ms(h.connect_timeout_ms, d.connect_timeout),
        upstream_timeout: ms(h.upstream_timeout_ms, d.upstream_timeout),
        retry_after: ms(h.retry_after_ms, d.retry_after),
        max_connections: h.max_connections.unwrap_or(d.max_connections),
        pool_per_server: h.pool_per_server.unwrap_or(d.pool_per_server),
    };
    let ms_of = |d: Duration| d.as_millis() as u64;
    let l = &limits;
    let checks = [
        bounded("max_head_bytes", l.max_head_bytes, 1024, 1 << 20, "a request head of 1 KiB to 1 MiB"),
        bounded("max_headers", l.max_headers, 1, 1000, "header fields per message"),
        bounded("max_body_bytes", l.max_body_bytes, 0, 1 << 40, "up to 1 TiB"),
        bounded("request_timeout_ms", ms_of(l.request_timeout), 1, DAY_MS, "1 ms to a day"),
        bounded("keepalive_timeout_ms", ms_of(l.keepalive_timeout), 1, DAY_MS, "1 ms to a day"),
        bounded("connect_timeout_ms", ms_of(l.connect_timeout), 1, DAY_MS, "1 ms to a day"),
        bounded("upstream_timeout_ms", ms_of(l.upstream_timeout), 1, DAY_MS, "1 ms to a day"),
        bounded("retry_after_ms", ms_of(l.retry_after), 0, DAY_MS, "up to a day"),
        bounded("max_connections", l.max_connections, 1, 1_000_000, "client connections per worker"),
        bounded("pool_per_server", l.pool_per_server, 0, 100_000, "idle upstream connections per server per worker"),
    ];
    for c in checks {
        if let Err((key, message)) = c {
            return Err(err(
                key_line(src, at, &key),
                format!("listener {name}: {}", message.replace("key `", "key `http.")),
            ));
        }
    }
    for (g, servers) in &groups {
        if let Some(s) = servers.iter().find(|s| s.port() == 0) {
            return Err(err(
                line,
                format!("key `http.upstreams.{g}` of listener {name}: {s} has port 0, which no server listens on"),
            ));
        }
    }
    Ok(crate::http::HttpSite { name, listen, routes, groups, limits })
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read it: {e}"),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&src, &file, &base)
    }

    /// Parse and validate config text; `base` resolves relative module paths.
    pub fn parse(src: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let err = |line: usize, message: String| ConfigError { file: file.to_owned(), line, message };
        let raw: RawConfig = toml::from_str(src).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(src, s.start));
            err(line, e.message().to_owned())
        })?;
        let rt = &raw.runtime;
        let runtime_at = src.find("[runtime]").unwrap_or(0);
        let checks = [
            bounded(
                "runtime.workers",
                rt.workers,
                0,
                256,
                "0 is one per CPU; each worker is a thread with its own poller and listeners",
            ),
            bounded(
                "runtime.max_versions_per_module",
                rt.max_versions_per_module,
                2,
                64,
                "an active and a replaced version at least",
            ),
            bounded("runtime.state_size_mb", rt.state_size_mb, 1, 1 << 20, "a state file of 1 MiB to 1 TiB"),
            bounded(
                "runtime.max_continuations_per_worker",
                u64::from(rt.max_continuations_per_worker),
                16,
                1 << 24,
                "continuation slots per worker",
            ),
            bounded(
                "runtime.spin_us",
                rt.spin_us,
                0,
                1_000_000,
                "an idle worker spins at most a second before it parks",
            ),
            bounded("runtime.drain_deadline_ms", rt.drain_deadline_ms, 1, DAY_MS, "up to a day"),
            bounded(
                "runtime.upgrade_ready_timeout_ms",
                rt.upgrade_ready_timeout_ms,
                100,
                3_600_000,
                "from 100 ms to an hour",
            ),
        ];
        for c in checks {
            if let Err((key, message)) = c {
                let short = key.rsplit('.').next().unwrap_or(&key);
                return Err(err(key_line(src, runtime_at, short), message));
            }
        }
        let mut modules: Vec<ModuleConfig> = Vec::new();
        let mut isolated: Vec<IsolatedConfig> = Vec::new();
        for m in raw.modules {
            let line = line_of(src, m.span().start);
            let m = m.into_inner();
            let name_line = line_of(src, m.name.span().start);
            let name = m.name.into_inner();
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(err(name_line, format!("key `modules.name`: {name:?} must be 1 to 64 of [a-z0-9_-]")));
            }
            if modules.iter().any(|x| x.name == name) || isolated.iter().any(|x| x.name == name) {
                return Err(err(name_line, format!("key `modules.name`: module {name:?} is declared twice")));
            }
            let sha256 = match m.sha256 {
                None => None,
                Some(s) => {
                    let l = line_of(src, s.span().start);
                    let v = s.into_inner().to_ascii_lowercase();
                    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(err(
                            l,
                            format!("key `modules.sha256` of module {name}: expected 64 hex digits, got {v:?}"),
                        ));
                    }
                    Some(v)
                }
            };
            let path = m.path.into_inner();
            let path = if path.is_absolute() { path } else { base.join(path) };
            let mut config = Vec::new();
            for (k, v) in &m.config {
                flatten(k, v, &mut config).map_err(|e| err(line, format!("module {name} config: {e}")))?;
            }
            if m.isolation == Isolation::Process {
                let timeout = m.hook_timeout_ms.unwrap_or(1000);
                if !(1..=60_000).contains(&timeout) {
                    return Err(err(
                        line,
                        format!("key `modules.hook_timeout_ms` of module {name}: {timeout} is not in 1..=60000"),
                    ));
                }
                if m.mode != SwapMode::Drain {
                    return Err(err(
                        line,
                        format!(
                            "module {name}: mode \"upgrade\" moves continuations between versions in one process; an isolated module has none here: leave mode out"
                        ),
                    ));
                }
                if let Some(sb) = &m.sandbox {
                    let checks = [
                        ("address_space_mb", sb.address_space_mb, 16, 1 << 20),
                        ("cpu_seconds", sb.cpu_seconds, 1, 1 << 31),
                        ("open_files", sb.open_files, 8, 1 << 20),
                    ];
                    for (key, v, lo, hi) in checks {
                        if let Some(v) = v.filter(|v| !(lo..=hi).contains(v)) {
                            return Err(err(
                                line,
                                format!("key `modules.sandbox.{key}` of module {name}: {v} is not in {lo}..={hi}"),
                            ));
                        }
                    }
                    if let Some(p) = sb.allow_read.iter().find(|p| !p.is_absolute()) {
                        return Err(err(
                            line,
                            format!(
                                "key `modules.sandbox.allow_read` of module {name}: {} is not an absolute path",
                                p.display()
                            ),
                        ));
                    }
                }
                isolated.push(IsolatedConfig {
                    name,
                    path,
                    sha256,
                    failure_policy: m.failure_policy,
                    config,
                    hook_timeout_ms: timeout,
                    sandbox: m.sandbox,
                    origin: format!("{file}:{line}"),
                });
                continue;
            }
            if m.sandbox.is_some() {
                return Err(err(
                    line,
                    format!(
                        "key `modules.sandbox` of module {name}: only an isolated module (isolation = \"process\") runs in a child to confine"
                    ),
                ));
            }
            if m.hook_timeout_ms.is_some() {
                return Err(err(
                    line,
                    format!(
                        "key `modules.hook_timeout_ms` of module {name}: only an isolated module (isolation = \"process\") has one"
                    ),
                ));
            }
            modules.push(ModuleConfig {
                name,
                path,
                sha256,
                mode: m.mode,
                failure_policy: m.failure_policy,
                config,
                origin: format!("{file}:{line}"),
            });
        }
        let mut tcp = Vec::new();
        // Every listening address once across [[tcp]] and [[http]] (port 0,
        // "any free port", never collides).
        let mut listening: Vec<(std::net::SocketAddr, usize)> = Vec::new();
        let mut once = |addr: std::net::SocketAddr, line: usize| match listening.iter().find(|(a, _)| *a == addr) {
            Some((_, first)) if addr.port() != 0 => Err(err(
                line,
                format!("listen address {addr} is given twice (first at line {first}); each listener needs its own"),
            )),
            _ => {
                listening.push((addr, line));
                Ok(())
            }
        };
        for t in raw.tcp {
            let addr = |s: &Spanned<String>, key: &str| -> Result<std::net::SocketAddr, ConfigError> {
                s.get_ref().parse().map_err(|_| {
                    err(
                        line_of(src, s.span().start),
                        format!("key `tcp.{key}`: {:?} is not an address like 127.0.0.1:9000", s.get_ref()),
                    )
                })
            };
            let listen = addr(&t.listen, "listen")?;
            let up_line =
                t.upstreams.as_ref().map_or(line_of(src, t.listen.span().start), |u| line_of(src, u.span().start));
            let mut upstreams: Vec<std::net::SocketAddr> = Vec::new();
            let none = Vec::new();
            for u in t.upstreams.as_ref().map_or(&none, |u| u.get_ref()) {
                upstreams.push(u.parse().map_err(|_| {
                    err(up_line, format!("key `tcp.upstreams`: {u:?} is not an address like 127.0.0.1:9000"))
                })?);
            }
            if upstreams.is_empty() && t.handler.is_none() {
                return Err(err(
                    up_line,
                    "key `tcp.upstreams`: at least one upstream is needed (or a `handler` module)".into(),
                ));
            }
            if t.handler.is_some() && !upstreams.is_empty() {
                return Err(err(up_line, "keys `tcp.handler` and `tcp.upstreams`: a handler module owns its connections; give one or the other".into()));
            }
            for m in t.modules.iter().chain(t.handler.iter()) {
                if isolated.iter().any(|x| &x.name == m) {
                    return Err(err(
                        up_line,
                        format!(
                            "[[tcp]] on {}: module {m:?} is isolated (isolation = \"process\"), which serves HTTP hooks only: run it in process for a TCP route",
                            t.listen.get_ref()
                        ),
                    ));
                }
                if !modules.iter().any(|x| &x.name == m) {
                    return Err(err(
                        up_line,
                        format!("[[tcp]] on {}: module {m:?} is not declared in [[modules]]", t.listen.get_ref()),
                    ));
                }
            }
            let listen_line = line_of(src, t.listen.span().start);
            once(listen, listen_line)?;
            let checks = [
                bounded("connect_timeout_ms", t.connect_timeout_ms, 1, DAY_MS, "1 ms to a day"),
                bounded("idle_timeout_ms", t.idle_timeout_ms, 1, DAY_MS, "1 ms to a day"),
                bounded("retry_after_ms", t.retry_after_ms, 0, DAY_MS, "up to a day"),
                bounded("max_connections", t.max_connections as u64, 1, 1_000_000, "connections per worker"),
            ];
            for c in checks {
                if let Err((key, message)) = c {
                    let message = format!("[[tcp]] on {listen}: {}", message.replace("key `", "key `tcp."));
                    return Err(err(key_line(src, t.listen.span().start, &key), message));
                }
            }
            if let Some(u) = upstreams.iter().find(|u| u.port() == 0) {
                return Err(err(up_line, format!("key `tcp.upstreams`: {u} has port 0, which no server listens on")));
            }
            tcp.push(crate::net::TcpRoute {
                listen,
                upstreams,
                connect_timeout: Duration::from_millis(t.connect_timeout_ms),
                idle_timeout: Duration::from_millis(t.idle_timeout_ms),
                retry_after: Duration::from_millis(t.retry_after_ms),
                max_connections: t.max_connections,
                modules: t.modules,
                handler: t.handler,
            });
        }
        let mut http = Vec::new();
        for (n, h) in raw.http.into_iter().enumerate() {
            let at = h.span().start;
            let listen_line = line_of(src, h.get_ref().listen.span().start);
            let site = parse_http(src, h.into_inner(), n, at, &modules, &isolated, &err)?;
            once(site.listen, listen_line)?;
            http.push(site);
        }
        let admin = match raw.admin {
            None => None,
            Some(a) => {
                let l = a.into_inner().listen;
                let line = line_of(src, l.span().start);
                let addr: std::net::SocketAddr = l.get_ref().parse().map_err(|_| {
                    err(line, format!("key `admin.listen`: {:?} is not an address like 127.0.0.1:9901", l.get_ref()))
                })?;
                once(addr, line)?;
                Some(addr)
            }
        };
        Ok(Config { source: file.to_owned(), runtime: raw.runtime, modules, isolated, tcp, http, admin })
    }

    /// The built-in default: the example modules found in `module_dir` (the
    /// directory of the molt binary in a cargo build), default settings.
    pub fn builtin(module_dir: &Path) -> Config {
        let m = |name: &str, config: Vec<(&str, &str)>| ModuleConfig {
            name: name.to_owned(),
            path: module_dir.join(format!("lib{name}.so")),
            sha256: None,
            mode: SwapMode::Drain,
            failure_policy: FailurePolicy::Restart,
            config: config.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            origin: "built-in default".to_owned(),
        };
        Config {
            source: "built-in default".to_owned(),
            runtime: RuntimeSection::default(),
            modules: vec![
                m("hello", vec![("greeting", "hello")]),
                m("header_rewrite", vec![("response.set.X-Served-By", "molt")]),
                m("rate_limit", vec![("rate", "1000000"), ("burst", "200000")]),
                m("echo_c", vec![]),
                m("counter", vec![]),
            ],
            isolated: Vec::new(),
            tcp: Vec::new(),
            http: vec![Config::builtin_http()],
            admin: None,
        }
    }

    /// The built-in default's HTTP listener: 127.0.0.1:8080, every path
    /// answered by the module chain rate_limit, header_rewrite, hello.
    pub fn builtin_http() -> crate::http::HttpSite {
        crate::http::HttpSite {
            name: "default".into(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            routes: vec![crate::http::HttpRoute {
                name: "default".into(),
                host: None,
                path: "/".into(),
                upstream: None,
                modules: vec!["rate_limit".into(), "header_rewrite".into(), "hello".into()],
                retry_non_idempotent: false,
            }],
            groups: Vec::new(),
            limits: crate::http::HttpLimits::default(),
        }
    }

    /// The run directory: configured, or `$XDG_RUNTIME_DIR/molt`, or `/tmp/molt-<uid>`.
    pub fn run_dir(&self) -> PathBuf {
        if let Some(d) = &self.runtime.run_dir {
            return d.clone();
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(x) if !x.is_empty() => PathBuf::from(x).join("molt"),
            _ => std::env::temp_dir().join(format!("molt-{}", crate::sys::files::effective_uid())),
        }
    }

    /// The drain deadline.
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_millis(self.runtime.drain_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(src, "molt.toml", Path::new("/etc/molt"))
    }

    #[test]
    fn defaults_and_module_fields() {
        let c = parse(
            r#"
[runtime]
workers = 2

[[modules]]
name = "hello"
path = "lib/libhello.so"
mode = "upgrade"
[modules.config]
greeting = "hi"
limits = { burst = 10, on = true }
"#,
        )
        .unwrap();
        assert_eq!(c.runtime.workers, 2);
        assert_eq!(c.runtime.drain_deadline_ms, 30_000);
        assert_eq!(c.runtime.max_versions_per_module, 4);
        assert_eq!(c.modules[0].path, PathBuf::from("/etc/molt/lib/libhello.so"));
        assert_eq!(c.modules[0].mode, SwapMode::Upgrade);
        assert_eq!(
            c.modules[0].config,
            vec![
                ("greeting".to_owned(), "hi".to_owned()),
                ("limits.burst".to_owned(), "10".to_owned()),
                ("limits.on".to_owned(), "true".to_owned())
            ]
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[runtime]\nworkers = 2\nspin = 3\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("molt.toml", 3));
        assert!(e.message.contains("unknown field `spin`"), "{e}");

        let e = parse("[[modules]]\nname = \"a\"\npath = \"x.so\"\nmode = \"drian\"\n").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("drian") && e.message.contains("drain"), "{e}");

        let e = parse("[[modules]]\nname = \"a\"\npath = \"x.so\"\nsha256 = \"abc\"\n").unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.to_string().contains("modules.sha256") && e.to_string().contains("64 hex digits"), "{e}");

        let e =
            parse("[[modules]]\nname = \"a\"\npath = \"x\"\n[[modules]]\nname = \"a\"\npath = \"y\"\n").unwrap_err();
        assert_eq!(e.line, 5);
        assert!(e.message.contains("declared twice"), "{e}");

        let e = parse("[[modules]]\nname = \"Bad Name\"\npath = \"x\"\n").unwrap_err();
        assert!(e.message.contains("[a-z0-9_-]"), "{e}");
    }

    #[test]
    fn bounds_are_checked_with_their_line_and_reason() {
        let e = parse("[runtime]\nspin_us = 5\nworkers = 65535\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("runtime.workers") && e.message.contains("0..=256"), "{e}");
        let e = parse("[runtime]\nstate_size_mb = 17592186044416\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("state_size_mb"), "{e}");
        let e = parse("\n[runtime]\nmax_versions_per_module = 1\n").unwrap_err();
        assert_eq!(e.line, 3, "the line is known: {e}");
        let http = |extra: &str| {
            format!(
                "[[http]]\nlisten = \"127.0.0.1:0\"\n{extra}\n[http.upstreams]\nb = [\"127.0.0.1:9\"]\n[[http.routes]]\nupstream = \"b\"\n"
            )
        };
        let e = parse(&http("max_connections = 0")).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("http.max_connections") && e.message.contains("listener http0"), "{e}");
        let e = parse(&http("request_timeout_ms = 0")).unwrap_err();
        assert!(e.message.contains("request_timeout_ms"), "{e}");
        let e = parse(&http("").replace("127.0.0.1:9", "127.0.0.1:0")).unwrap_err();
        assert!(e.message.contains("port 0"), "{e}");
        let e = parse("[[tcp]]\nlisten = \"127.0.0.1:0\"\nupstreams = [\"127.0.0.1:9\"]\nidle_timeout_ms = 0\n")
            .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("tcp.idle_timeout_ms"), "{e}");
        let e = Config::load(Path::new("/nonexistent/molt.toml")).unwrap_err();
        assert!(e.to_string().starts_with("config /nonexistent/molt.toml: cannot read it"), "no line 0: {e}");
    }

    #[test]
    fn the_admin_listener_is_checked_like_any_listener() {
        assert_eq!(
            parse("[admin]\nlisten = \"127.0.0.1:9901\"\n").unwrap().admin,
            Some("127.0.0.1:9901".parse().unwrap())
        );
        assert_eq!(parse("").unwrap().admin, None, "off by default");
        let e = parse("[admin]\nlisten = \"localhost:x\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("admin.listen"), "{e}");
        let e = parse("[admin]\nlisten = \"127.0.0.1:9901\"\nopen = true\n").unwrap_err();
        assert!(e.message.contains("unknown field `open`"), "{e}");
        let src = "[[http]]\nlisten = \"127.0.0.1:9901\"\n[[http.routes]]\npath = \"/\"\n\n[admin]\nlisten = \"127.0.0.1:9901\"\n";
        let e = parse(src).unwrap_err();
        assert!(e.message.contains("twice"), "the admin address is another listener's: {e}");
    }

    #[test]
    fn a_route_retries_only_idempotent_requests_unless_it_says_so() {
        let src = |extra: &str| {
            format!(
                "[[http]]\nlisten = \"127.0.0.1:0\"\n[http.upstreams]\nb = [\"127.0.0.1:9\"]\n\
                 [[http.routes]]\nupstream = \"b\"\n{extra}"
            )
        };
        assert!(!parse(&src("")).unwrap().http[0].routes[0].retry_non_idempotent);
        assert!(parse(&src("retry_non_idempotent = true\n")).unwrap().http[0].routes[0].retry_non_idempotent);
        let e = parse(&src("retry_non_idempotent = 1\n")).unwrap_err();
        assert!(e.message.contains("retry_non_idempotent") || e.message.contains("bool"), "{e}");
    }

    /// Isolated modules: their keys parse, and every bad one is refused
    /// with its module named.
    #[test]
    fn isolated_modules_and_their_bad_keys() {
        let ok = parse(
            "[[modules]]\nname = \"m\"\npath = \"m.so\"\nisolation = \"process\"\nhook_timeout_ms = 250\n[modules.sandbox]\nfiles = \"confined\"\nallow_read = [\"/etc/ssl\"]\nsyscalls = \"restricted\"\nopen_files = 64\n\n[[http]]\nlisten = \"127.0.0.1:0\"\n[[http.routes]]\nmodules = [\"m\"]\n",
        )
        .unwrap();
        assert!(ok.modules.is_empty());
        let iso = &ok.isolated[0];
        assert_eq!((iso.name.as_str(), iso.hook_timeout_ms), ("m", 250));
        let sb = iso.sandbox.as_ref().unwrap();
        assert_eq!(sb.files, crate::module::spec::SandboxFiles::Confined);
        assert_eq!(sb.syscalls, crate::module::spec::SandboxSyscalls::Restricted);
        let bad = [
            ("isolation = \"thread\"\n", "unknown variant `thread`"),
            ("isolation = \"process\"\nhook_timeout_ms = 0\n", "hook_timeout_ms` of module m: 0 is not in 1..=60000"),
            ("hook_timeout_ms = 5\n", "only an isolated module"),
            ("[modules.sandbox]\nopen_files = 4\n", "only an isolated module"),
            ("isolation = \"process\"\nmode = \"upgrade\"\n", "mode \"upgrade\""),
            ("isolation = \"process\"\n[modules.sandbox]\nopen_files = 4\n", "open_files` of module m: 4 is not in 8"),
            ("isolation = \"process\"\n[modules.sandbox]\nallow_read = [\"etc\"]\n", "not an absolute path"),
            ("isolation = \"process\"\n[modules.sandbox]\nfiles = \"none\"\n", "unknown variant `none`"),
            ("isolation = \"process\"\n[modules.sandbox]\nuid = 0\n", "unknown field `uid`"),
        ];
        for (keys, want) in bad {
            let e = parse(&format!("[[modules]]\nname = \"m\"\npath = \"m.so\"\n{keys}")).unwrap_err();
            assert!(e.message.contains(want), "{keys:?}: {e}");
        }
        // An isolated module serves HTTP hooks only: a TCP route may not name it.
        let e = parse(
            "[[modules]]\nname = \"m\"\npath = \"m.so\"\nisolation = \"process\"\n\n[[tcp]]\nlisten = \"127.0.0.1:0\"\nhandler = \"m\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("is isolated"), "{e}");
    }
}
