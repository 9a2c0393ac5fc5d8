//! `molt ctl`: the control socket's client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// Send one command and return the `result`, or the error text.
pub fn request(socket: &Path, cmd: &str) -> Result<Value, String> {
    request_value(socket, &json!({ "cmd": cmd }))
}

/// Send one request object and return the `result`, or the error text.
pub fn request_value(socket: &Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to the control socket {}: {e} (is molt running with this run directory?)",
            socket.display()
        )
    })?;
    // An upgrade waits for a new process: up to 10 + 30 + 10 s.
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    writeln!(s, "{req}").map_err(|e| format!("writing to {}: {e}", socket.display()))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(|e| format!("reading from {}: {e}", socket.display()))?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad reply from {}: {e}", socket.display()))?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(v.get("error").and_then(Value::as_str).unwrap_or("unknown error").to_owned())
    }
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(x) => x.to_string(),
    }
}

/// A human table of a status document.
pub fn render_status(v: &Value) -> String {
    let mut o = String::new();
    o += &format!("molt pid {}  up {} ms  config {}\n", s(v, "pid"), s(v, "uptime_ms"), s(v, "config"));
    o += "\nworkers\n  idx  conts  dispatched  errors  panics  stale  parks\n";
    for w in v["workers"].as_array().into_iter().flatten() {
        o += &format!(
            "  {:>3}  {:>5}  {:>10}  {:>6}  {:>6}  {:>5}  {:>5}\n",
            s(w, "index"),
            s(w, "continuations"),
            s(w, "dispatched"),
            s(w, "errors"),
            s(w, "panics"),
            s(w, "stale_dropped"),
            s(w, "parks")
        );
    }
    if let Some(g) = v.get("generation").filter(|g| !g.is_null()) {
        o += &format!("\nactive generation {} (reload {})\n", s(g, "id"), s(g, "reload_id"));
        for m in g["modules"].as_array().into_iter().flatten() {
            o += &format!(
                "  {:<16} {:<10} v#{:<5} {:<8} {}\n",
                s(m, "name"),
                s(m, "version"),
                s(m, "version_id"),
                s(m, "mode"),
                s(m, "path")
            );
        }
    }
    o += "\nversions\n  id     module           version    state     conts  timers  copy\n";
    for x in v["versions"].as_array().into_iter().flatten() {
        o += &format!(
            "  v#{:<4} {:<16} {:<10} {:<9} {:>5}  {:>6}  {}\n",
            s(x, "id"),
            s(x, "module"),
            s(x, "version"),
            s(x, "state"),
            s(x, "continuations"),
            s(x, "timers"),
            s(x, "copy")
        );
        if let Some(p) = x.get("pinned").and_then(Value::as_str) {
            o += &format!("         pinned: {p}\n");
        }
    }
    o += "\nreloads\n  id   kind      ok     duration_us  error\n";
    for r in v["reloads"].as_array().into_iter().flatten() {
        o += &format!(
            "  {:<4} {:<9} {:<6} {:>11}  {}\n",
            s(r, "id"),
            s(r, "kind"),
            s(r, "ok"),
            s(r, "duration_us"),
            s(r, "error")
        );
    }
    let st = &v["state"];
    o += &format!(
        "\nstate region {}  size {}  used {}  free {}\n",
        s(st, "path"),
        s(&st["usage"], "size"),
        s(&st["usage"], "used"),
        s(&st["usage"], "free")
    );
    let blocks = v["state_blocks"].as_array().cloned().unwrap_or_default();
    if !blocks.is_empty() {
        o += "  owner            name             schema  bytes       state\n";
        for b in &blocks {
            o += &format!(
                "  {:<16} {:<16} {:>6}  {:<10}  {}\n",
                s(b, "owner"),
                s(b, "name"),
                s(b, "schema"),
                s(b, "len"),
                s(b, "state")
            );
        }
    }
    let isolated = v["isolated"].as_array().cloned().unwrap_or_default();
    if !isolated.is_empty() {
        o += "
isolated modules
  module           state       pid      gen  restarts  hook_failures  last exit
";
        for m in &isolated {
            o += &format!(
                "  {:<16} {:<11} {:<8} {:>3}  {:>8}  {:>13}  {}
",
                s(m, "module"),
                s(m, "state"),
                s(m, "pid"),
                s(m, "generation"),
                s(m, "restarts"),
                s(m, "hook_failures"),
                s(m, "last_exit")
            );
        }
    }
    o
}
