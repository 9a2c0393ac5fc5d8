//! Status (JSON) and metrics (Prometheus text) of a running runtime.

use std::time::Instant;

use prometheus_client::metrics::counter::Counter as PCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
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
    let versions: Vec<Value> = rt
        .versions()
        .into_iter()
        .map(|r| {
            let in_active = active.as_ref().is_some_and(|g| g.entries.iter().any(|e| e.version.id() == r.meta.id));
            let state = r.stage.name();
            json!({
                "id": r.meta.id.0,
                "module": r.meta.name,
                "version": r.meta.version,
                "version_number": r.meta.version_number,
                "path": r.meta.source,
                "copy": r.meta.copy,
                "state": state,
                "continuations": r.holders.conts(),
                "timers": r.holders.timers.load(Ordering::Relaxed),
                "held_by_active_generation": in_active,
                "pinned": r.unloaded().and_then(|u| u.pinned.clone()),
                "drain_deadline_in_ms": match r.stage {
                    crate::module::Stage::Draining { deadline, .. } => Some(deadline.saturating_duration_since(now).as_millis() as u64),
                    _ => None,
                },
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
            "warning": host.state.warning(),
        },
        "state_blocks": host.state.blocks(),
        "user_args": host.user_args.names(),
        "isolated": rt.isolated().iter().chain(rt.isolated_retiring().iter()).map(|s| s.status()).collect::<Vec<_>>(),
    })
}

/// A per-worker counter: its metric name (without `_total`, which the
/// encoder appends), help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&crate::worker::WorkerStats) -> u64);

/// Labels of one sample.
type Labels = Vec<(String, String)>;

/// A counter family, filled from our own counters at each scrape.
fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, PCounter> {
    let f = Family::<Labels, PCounter>::default();
    // The encoder ends the help text with its own full stop.
    reg.register(name, help.trim_end_matches('.'), f.clone());
    f
}

/// A gauge family, filled at each scrape.
fn gauge(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help.trim_end_matches('.'), f.clone());
    f
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Metrics in the OpenMetrics text format (what Prometheus scrapes), encoded
/// by `prometheus-client` from the runtime's counters at this moment. Every
/// counter is cumulative since start (never reset, never recomputed from a
/// window), so it cannot go down.
pub fn metrics(rt: &RuntimeShared, upgrader: Option<&super::Upgrader>) -> String {
    let mut reg = Registry::default();
    let counters: [Counter; 5] = [
        ("molt_dispatch", "Events handed to modules.", |s| s.dispatched.load(Ordering::Relaxed)),
        ("molt_errors", "Module calls that returned an error.", |s| s.errors.load(Ordering::Relaxed)),
        ("molt_panics", "Module calls that panicked.", |s| s.panics.load(Ordering::Relaxed)),
        ("molt_stale_dropped", "Events dropped for a stale or ending target.", |s| {
            s.stale_dropped.load(Ordering::Relaxed)
        }),
        ("molt_parks", "Times a worker blocked in poll.", |s| s.parks.load(Ordering::Relaxed)),
    ];
    for (name, help, f) in counters {
        let fam = counter(&mut reg, name, help);
        for w in rt.workers() {
            fam.get_or_create(&labels(&[("worker", &w.index().to_string())])).inc_by(f(w.stats()));
        }
    }
    type Proxy = (&'static str, &'static str, fn(&RuntimeShared, usize) -> u64);
    let proxy: [Proxy; 16] = [
        ("molt_http_requests", "HTTP requests whose head was read.", |r, w| {
            r.http_stats(w).requests.load(Ordering::Relaxed)
        }),
        ("molt_http_accepted", "HTTP client connections accepted.", |r, w| {
            r.http_stats(w).accepted.load(Ordering::Relaxed)
        }),
        ("molt_http_overload", "HTTP connections refused with 503 at the connection limit.", |r, w| {
            r.http_stats(w).overload.load(Ordering::Relaxed)
        }),
        ("molt_http_module_answers", "HTTP requests answered by a module.", |r, w| {
            r.http_stats(w).module_answers.load(Ordering::Relaxed)
        }),
        ("molt_http_upstream_connects", "New upstream connections.", |r, w| {
            r.http_stats(w).upstream_connects.load(Ordering::Relaxed)
        }),
        ("molt_http_pool_reuses", "Requests sent on a pooled upstream connection.", |r, w| {
            r.http_stats(w).pool_reuses.load(Ordering::Relaxed)
        }),
        (
            "molt_http_upstream_failures",
            "Upstream attempts that failed (refused, closed, malformed, timed out).",
            |r, w| r.http_stats(w).upstream_failures.load(Ordering::Relaxed),
        ),
        ("molt_http_upstream_retries", "HTTP requests sent again after a failed upstream attempt.", |r, w| {
            r.http_stats(w).upstream_retries.load(Ordering::Relaxed)
        }),
        ("molt_http_client_aborts", "HTTP transactions given up because the client left mid-request.", |r, w| {
            r.http_stats(w).client_aborts.load(Ordering::Relaxed)
        }),
        ("molt_http_hook_failures", "HTTP hook calls that failed.", |r, w| {
            r.http_stats(w).hook_failures.load(Ordering::Relaxed)
        }),
        ("molt_http_held_hooks", "HTTP hook attempts that met a module held for a state migration.", |r, w| {
            r.http_stats(w).held_hooks.load(Ordering::Relaxed)
        }),
        (
            "molt_http_timer_checks",
            "HTTP client connections the timeout sweep looked at (those with a deadline due).",
            |r, w| r.http_stats(w).timer_checks.load(Ordering::Relaxed),
        ),
        ("molt_tcp_accepted", "TCP proxy connections accepted.", |r, w| {
            r.tcp_stats(w).accepted.load(Ordering::Relaxed)
        }),
        ("molt_tcp_refused", "TCP connections refused at the limit.", |r, w| {
            r.tcp_stats(w).refused.load(Ordering::Relaxed)
        }),
        ("molt_tcp_bytes_up", "TCP bytes client to upstream.", |r, w| r.tcp_stats(w).bytes_up.load(Ordering::Relaxed)),
        ("molt_tcp_bytes_down", "TCP bytes upstream to client.", |r, w| {
            r.tcp_stats(w).bytes_down.load(Ordering::Relaxed)
        }),
    ];
    let workers = rt.workers().len();
    for (name, help, f) in proxy {
        let fam = counter(&mut reg, name, help);
        for w in 0..workers {
            fam.get_or_create(&labels(&[("worker", &w.to_string())])).inc_by(f(rt, w));
        }
    }
    let responses = counter(&mut reg, "molt_http_responses", "HTTP responses by status class.");
    for w in 0..workers {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = rt.http_stats(w).responses[i].load(Ordering::Relaxed);
            responses.get_or_create(&labels(&[("worker", &w.to_string()), ("class", class)])).inc_by(n);
        }
    }
    let live: Vec<usize> = rt.broadcast(|w| w.live_continuations());
    let conts = gauge(&mut reg, "molt_continuations", "Live continuations.");
    for (i, n) in live.iter().enumerate() {
        conts.get_or_create(&labels(&[("worker", &i.to_string())])).set(*n as i64);
    }
    let versions = rt.versions();
    let mut by_module: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for v in &versions {
        let e = by_module.entry(v.meta.name.as_str()).or_default();
        match &v.stage {
            crate::module::Stage::Pinned(_) => e.1 += 1,
            s if s.is_loaded() => e.0 += 1,
            _ => {}
        }
    }
    let loaded = gauge(&mut reg, "molt_versions_loaded", "Loaded versions per module.");
    let pinned = gauge(&mut reg, "molt_versions_pinned", "Unloaded versions still mapped.");
    for (m, (l, p)) in &by_module {
        loaded.get_or_create(&labels(&[("module", m)])).set(*l as i64);
        pinned.get_or_create(&labels(&[("module", m)])).set(*p as i64);
    }
    let totals = rt.registry().totals();
    let reloads = counter(&mut reg, "molt_reloads", "Loads, reloads, restarts and rollbacks since start, by result.");
    for kind in ["load", "reload", "restart", "rollback"] {
        for ok in [true, false] {
            let n: u64 = totals.iter().filter(|t| t.0 == kind && t.1 == ok).map(|t| t.2).sum();
            let result = if ok { "ok" } else { "refused" };
            reloads.get_or_create(&labels(&[("kind", kind), ("result", result)])).inc_by(n);
        }
    }
    let dropped =
        counter(&mut reg, "molt_host_replies_dropped", "Replies to the host dropped because nobody read them.");
    dropped.get_or_create(&Vec::new()).inc_by(crate::host::host_replies_dropped());
    let seconds = Family::<Labels, PCounter<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(
        "molt_reload_seconds",
        "Time spent in loads, reloads, restarts and rollbacks since start.",
        seconds.clone(),
    );
    let sum: u64 = totals.iter().map(|t| t.3).sum();
    seconds.get_or_create(&Vec::new()).inc_by(sum as f64 / 1e6);
    if !rt.isolated().is_empty() {
        let restarts =
            counter(&mut reg, "molt_isolated_restarts", "Children of an isolated module started after its first.");
        let failures = counter(
            &mut reg,
            "molt_isolated_hook_failures",
            "Hooks of an isolated module failed by its child (a death, a hang, a broken ring).",
        );
        let up = gauge(&mut reg, "molt_isolated_up", "1 while an isolated module's child runs.");
        let links: Vec<usize> =
            rt.broadcast(|w| w.layer::<crate::http::HttpLayer>().map_or(0, crate::http::HttpLayer::isolated_links));
        let gauge_links = gauge(
            &mut reg,
            "molt_isolated_links",
            "A worker's links to isolated modules' children: one per module, and one per swap still draining.",
        );
        for (i, n) in links.iter().enumerate() {
            gauge_links.get_or_create(&labels(&[("worker", &i.to_string())])).set(*n as i64);
        }
        for s in rt.isolated() {
            let st = s.status();
            let l = labels(&[("module", st.module.as_str())]);
            restarts.get_or_create(&l).inc_by(st.restarts);
            failures.get_or_create(&l).inc_by(st.hook_failures);
            up.get_or_create(&l).set(i64::from(st.state == "running"));
        }
    }
    if let Some(u) = upgrader {
        let (ok, failed) = u.totals();
        let upgrades =
            counter(&mut reg, "molt_upgrades", "Binary upgrades this process ran (as the old process), by result.");
        upgrades.get_or_create(&labels(&[("result", "ok")])).inc_by(ok);
        upgrades.get_or_create(&labels(&[("result", "failed")])).inc_by(failed);
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}
