//! `cairn run --metrics-addr`: serves the job's [`Metrics`] at `GET /metrics` in Prometheus's
//! text format while the run lasts, so a Prometheus server (or `curl`) can watch a long run.
//!
//! One thread answers requests one at a time: a scrape encodes a few dozen series, and a
//! Prometheus server scrapes every few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use cairn_engine::Metrics;

/// A running `/metrics` endpoint; stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free one; see [`MetricsServer::addr`]) and starts serving.
    pub fn start(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let server = Arc::new(tiny_http::Server::http(addr).map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("metrics server bound to a non-IP address"))?;
        let s = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("cairn-metrics".into())
            .spawn(move || serve(&s, &metrics))?;
        Ok(MetricsServer {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, metrics: &Metrics) {
    // `incoming_requests` ends when `unblock` is called.
    for req in server.incoming_requests() {
        let response = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
            let header = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            )
            .ok();
            let mut r = tiny_http::Response::from_string(metrics.encode());
            if let Some(h) = header {
                r = r.with_header(h);
            }
            r
        } else {
            tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
        };
        // A client that went away is its own problem, not the run's.
        let _ = req.respond(response);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use cairn_engine::Metrics;

    use super::MetricsServer;

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_current_metrics_and_404_elsewhere() {
        let m = Arc::new(Metrics::new());
        let server = MetricsServer::start("127.0.0.1:0", Arc::clone(&m)).unwrap();
        m.add_records(1, 41);
        let r = get(server.addr(), "/metrics");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(
            r.contains("cairn_records_processed_total{slot=\"1\"} 41"),
            "{r}"
        );
        // Updates show on the next scrape.
        m.add_records(1, 1);
        assert!(get(server.addr(), "/metrics").contains("{slot=\"1\"} 42"));
        assert!(get(server.addr(), "/").starts_with("HTTP/1.1 404"));
        drop(server); // must not hang
    }
}
