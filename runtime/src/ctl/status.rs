//! Status (JSON) and metrics (Prometheus text) of a running runtime.

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

use crate::runtime::RuntimeShared;
use crate::sync::Ordering;

/// The status document (see docs/control.md).
pub fn status(rt: &RuntimeShared, started: Instant, config: &str) -> Value {
    let live: Vec<usize> = rt.broadcast(|w| w.live_continuations());
    let workers: Vec<Value> = rt
        .workers()
        .iter()
        .zip(&live)
        .map(|(w, n)| {
            let s = w.stats();
            json!({
                "index": w.index(),
                "continuations": n,
                "dispatched": s.dispatched.load(Ordering::Relaxed),
                "errors": s.errors.load(Ordering::Relaxed),
                "panics": s.panics.load(Ordering::Relaxed),
                "stale_dropped": s.stale_dropped.load(Ordering::Relaxed),
                "parks": s.parks.load(Ordering::Relaxed),
                "context_violations": s.context_violations.load(Ordering::Relaxed),
            })
        })
        .collect();
    let reg = rt.registry();
    let active = reg.active();
    let now = Instant::now();
    let draining = reg.draining();
    let versions: Vec<Value> = rt
        .versions()
        .into_iter()
        .map(|r| {
            let in_active = active.as_ref().is_some_and(|g| g.entries.iter().any(|e| e.version.id() == r.meta.id));
            let state = match &r.unloaded {
                Some(u) if u.pinned.is_some() => "pinned",
                Some(_) => "unloaded",
                None if in_active => "active",
                None => "draining",
            };
            json!({
                "id": r.meta.id.0,
                "module": r.meta.name,
                "version": r.meta.version,
                "version_number": r.meta.version_number,
                "path": r.meta.source,
                "copy": r.meta.copy,
                "state": state,
                "continuations": r.holders.conts.load(Ordering::Relaxed),
                "timers": r.holders.timers.load(Ordering::Relaxed),
                "held_by_active_generation": in_active,
                "pinned": r.unloaded.as_ref().and_then(|u| u.pinned.clone()),
                "drain_deadline_in_ms": draining.iter().find(|(id, _)| *id == r.meta.id)
                    .map(|(_, t)| t.saturating_duration_since(now).as_millis() as u64),
            })
        })
        .collect();
    let generation = active.as_ref().map(|g| {
        json!({
            "id": g.id,
            "reload_id": g.reload_id,
            "modules": g.entries.iter().map(|e| json!({
                "name": e.cfg.name,
                "version": e.version.meta().version,
                "version_id": e.version.id().0,
                "mode": e.cfg.mode,
                "failure_policy": e.cfg.failure_policy,
                "path": e.cfg.path,
                "sha256": e.sha256,
            })).collect::<Vec<_>>(),
        })
    });
    let previous = reg
        .previous()
        .map(|p| p.iter().map(|c| json!({"name": c.name, "sha256": c.sha256, "path": c.path})).collect::<Vec<_>>());
    let host = rt.loader().host();
    json!({
        "pid": std::process::id(),
        "uptime_ms": started.elapsed().as_millis() as u64,
        "run_dir": rt.run_dir(),
        "config": config,
        "workers": workers,
        "generation": generation,
        "previous": previous,
        "versions": versions,
        "reloads": reg.history(),
        "state": {
            "path": host.state.path(),
            "usage": host.state.usage(),
        },
        "state_blocks": host.state.blocks(),
        "user_args": host.user_args.names(),
    })
}

/// A per-worker counter: its metric name, help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&crate::worker::WorkerStats) -> u64);

/// Metrics in the Prometheus text format.
pub fn metrics(rt: &RuntimeShared) -> String {
    let mut out = String::new();
    let counters: [Counter; 5] = [
        ("molt_dispatch_total", "Events handed to modules.", |s| s.dispatched.load(Ordering::Relaxed)),
        ("molt_errors_total", "Module calls that returned an error.", |s| s.errors.load(Ordering::Relaxed)),
        ("molt_panics_total", "Module calls that panicked.", |s| s.panics.load(Ordering::Relaxed)),
        ("molt_stale_dropped_total", "Events dropped for a stale or ending target.", |s| {
            s.stale_dropped.load(Ordering::Relaxed)
        }),
        ("molt_parks_total", "Times a worker blocked in poll.", |s| s.parks.load(Ordering::Relaxed)),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for w in rt.workers() {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", w.index(), f(w.stats()));
        }
    }
    type Proxy = (&'static str, &'static str, fn(&RuntimeShared, usize) -> u64);
    let proxy: [Proxy; 15] = [
        ("molt_http_requests_total", "HTTP requests whose head was read.", |r, w| {
            r.http_stats(w).requests.load(Ordering::Relaxed)
        }),
        ("molt_http_accepted_total", "HTTP client connections accepted.", |r, w| {
            r.http_stats(w).accepted.load(Ordering::Relaxed)
        }),
        ("molt_http_overload_total", "HTTP connections refused with 503 at the connection limit.", |r, w| {
            r.http_stats(w).overload.load(Ordering::Relaxed)
        }),
        ("molt_http_module_answers_total", "HTTP requests answered by a module.", |r, w| {
            r.http_stats(w).module_answers.load(Ordering::Relaxed)
        }),
        ("molt_http_upstream_connects_total", "New upstream connections.", |r, w| {
            r.http_stats(w).upstream_connects.load(Ordering::Relaxed)
        }),
        ("molt_http_pool_reuses_total", "Requests sent on a pooled upstream connection.", |r, w| {
            r.http_stats(w).pool_reuses.load(Ordering::Relaxed)
        }),
        (
            "molt_http_upstream_failures_total",
            "Upstream attempts that failed (refused, closed, malformed, timed out).",
            |r, w| r.http_stats(w).upstream_failures.load(Ordering::Relaxed),
        ),
        ("molt_http_upstream_retries_total", "HTTP requests sent again after a failed upstream attempt.", |r, w| {
            r.http_stats(w).upstream_retries.load(Ordering::Relaxed)
        }),
        ("molt_http_client_aborts_total", "HTTP transactions given up because the client left mid-request.", |r, w| {
            r.http_stats(w).client_aborts.load(Ordering::Relaxed)
        }),
        ("molt_http_hook_failures_total", "HTTP hook calls that failed.", |r, w| {
            r.http_stats(w).hook_failures.load(Ordering::Relaxed)
        }),
        ("molt_http_held_hooks_total", "HTTP hook attempts that met a module held for a state migration.", |r, w| {
            r.http_stats(w).held_hooks.load(Ordering::Relaxed)
        }),
        ("molt_tcp_accepted_total", "TCP proxy connections accepted.", |r, w| {
            r.tcp_stats(w).accepted.load(Ordering::Relaxed)
        }),
        ("molt_tcp_refused_total", "TCP connections refused at the limit.", |r, w| {
            r.tcp_stats(w).refused.load(Ordering::Relaxed)
        }),
        ("molt_tcp_bytes_up_total", "TCP bytes client to upstream.", |r, w| {
            r.tcp_stats(w).bytes_up.load(Ordering::Relaxed)
        }),
        ("molt_tcp_bytes_down_total", "TCP bytes upstream to client.", |r, w| {
            r.tcp_stats(w).bytes_down.load(Ordering::Relaxed)
        }),
    ];
    for (name, help, f) in proxy {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for w in 0..rt.workers().len() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", f(rt, w));
        }
    }
    let _ = writeln!(
        out,
        "# HELP molt_http_responses_total HTTP responses by status class.\n# TYPE molt_http_responses_total counter"
    );
    for w in 0..rt.workers().len() {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = rt.http_stats(w).responses[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "molt_http_responses_total{{worker=\"{w}\",class=\"{class}\"}} {n}");
        }
    }
    let live: Vec<usize> = rt.broadcast(|w| w.live_continuations());
    let _ = writeln!(out, "# HELP molt_continuations Live continuations.\n# TYPE molt_continuations gauge");
    for (i, n) in live.iter().enumerate() {
        let _ = writeln!(out, "molt_continuations{{worker=\"{i}\"}} {n}");
    }
    let versions = rt.versions();
    let mut by_module: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for v in &versions {
        let e = by_module.entry(v.meta.name.as_str()).or_default();
        match &v.unloaded {
            None => e.0 += 1,
            Some(u) if u.pinned.is_some() => e.1 += 1,
            Some(_) => {}
        }
    }
    let _ = writeln!(out, "# HELP molt_versions_loaded Loaded versions per module.\n# TYPE molt_versions_loaded gauge");
    for (m, (loaded, _)) in &by_module {
        let _ = writeln!(out, "molt_versions_loaded{{module=\"{m}\"}} {loaded}");
    }
    let _ =
        writeln!(out, "# HELP molt_versions_pinned Unloaded versions still mapped.\n# TYPE molt_versions_pinned gauge");
    for (m, (_, pinned)) in &by_module {
        let _ = writeln!(out, "molt_versions_pinned{{module=\"{m}\"}} {pinned}");
    }
    let totals = rt.registry().totals();
    let _ = writeln!(
        out,
        "# HELP molt_reloads_total Loads, reloads, restarts and rollbacks since start, by result.\n# TYPE molt_reloads_total counter"
    );
    for kind in ["load", "reload", "restart", "rollback"] {
        for ok in [true, false] {
            let n: u64 = totals.iter().filter(|t| t.0 == kind && t.1 == ok).map(|t| t.2).sum();
            let result = if ok { "ok" } else { "refused" };
            let _ = writeln!(out, "molt_reloads_total{{kind=\"{kind}\",result=\"{result}\"}} {n}");
        }
    }
    let (sum, count) = totals.iter().fold((0u64, 0u64), |a, t| (a.0 + t.3, a.1 + t.2));
    let _ = writeln!(
        out,
        "# HELP molt_reload_duration_seconds Reload durations since start.\n# TYPE molt_reload_duration_seconds summary"
    );
    let _ = writeln!(out, "molt_reload_duration_seconds_sum {}", sum as f64 / 1e6);
    let _ = writeln!(out, "molt_reload_duration_seconds_count {count}");
    out
}
