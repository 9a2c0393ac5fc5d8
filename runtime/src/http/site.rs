//! What an `[[http]]` listener serves: routes, upstream groups, limits.

use std::net::SocketAddr;
use std::time::Duration;

/// One `[[http]]` listener's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSite {
    /// Its name (status, metrics, `MOLT_HTTP_ITEM_ROUTE` prefix).
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its routes; a request takes the best match (see [`HttpSite::route_for`]).
    pub routes: Vec<HttpRoute>,
    /// Upstream groups by name: servers tried round robin.
    pub groups: Vec<(String, Vec<SocketAddr>)>,
    /// Limits and timeouts.
    pub limits: HttpLimits,
}

/// A route: which requests, which upstream group, which modules.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRoute {
    /// Its name (for `MOLT_HTTP_ITEM_ROUTE` and logs).
    pub name: String,
    /// The Host it serves (case-insensitive, port ignored); `None`: any.
    pub host: Option<String>,
    /// The path prefix it serves ("/" for all).
    pub path: String,
    /// The default upstream group (index into `groups`); modules may choose another.
    pub upstream: Option<usize>,
    /// The module chain, called at every hook in this order.
    pub modules: Vec<String>,
    /// Whether a request of any method may be sent again after a failed
    /// attempt that may have reached a server (off: only idempotent ones).
    pub retry_non_idempotent: bool,
}

/// Limits and timeouts of a listener, per worker where it says so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpLimits {
    /// Largest request or response head (431 / 502 over it).
    pub max_head_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Largest request body (413 over it).
    pub max_body_bytes: u64,
    /// A request's head and body must arrive within this, and its body
    /// may not stall longer than this (408).
    pub request_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout: Duration,
    /// Connecting to an upstream may take this long (then the next one).
    pub connect_timeout: Duration,
    /// The upstream must start its response (and keep sending) within this (504).
    pub upstream_timeout: Duration,
    /// A server whose connect failed is skipped this long.
    pub retry_after: Duration,
    /// Client connections per worker; more get 503 and are closed.
    pub max_connections: usize,
    /// Idle pooled connections kept per upstream server per worker.
    pub pool_per_server: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
            max_connections: 10_000,
            pool_per_server: 64,
        }
    }
}

impl HttpSite {
    /// The route for a request to `host` (a Host value, port allowed) and
    /// `path`: among routes whose host matches (an exact host beats none),
    /// the longest path prefix.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host
            .map(|h| h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(h, _)| h));
        let mut best: Option<(bool, usize, usize)> = None;
        for (i, r) in self.routes.iter().enumerate() {
            let exact = match (&r.host, host) {
                (Some(rh), Some(h)) if rh.eq_ignore_ascii_case(h) => true,
                (Some(_), _) => continue,
                (None, _) => false,
            };
            if !path.starts_with(r.path.as_str()) {
                continue;
            }
            let key = (exact, r.path.len(), i);
            if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
                best = Some(key);
            }
        }
        best.map(|b| b.2)
    }

    /// The index of group `name`.
    pub fn group(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|(n, _)| n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> HttpSite {
        let r = |name: &str, host: Option<&str>, path: &str| HttpRoute {
            name: name.into(),
            host: host.map(Into::into),
            path: path.into(),
            upstream: None,
            modules: vec![],
            retry_non_idempotent: false,
        };
        HttpSite {
            name: "s".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            routes: vec![r("all", None, "/"), r("api", None, "/api/"), r("ex", Some("example.com"), "/")],
            groups: vec![],
            limits: HttpLimits::default(),
        }
    }

    #[test]
    fn longest_prefix_and_exact_host_win() {
        let s = site();
        assert_eq!(s.route_for(Some("x"), "/"), Some(0));
        assert_eq!(s.route_for(Some("x"), "/api/v1"), Some(1));
        assert_eq!(s.route_for(Some("Example.com:8080"), "/api/v1"), Some(2));
        assert_eq!(s.route_for(None, "/api"), Some(0));
    }
}
