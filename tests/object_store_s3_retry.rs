//! S3 requests are retried by `object_store`'s own `RetryConfig` (set from
//! `s3-max-retries` / `s3-retry-timeout`): through a loopback proxy in front of the S3 server
//! that answers the first requests with `503 Slow Down`, a put succeeds when retries are
//! allowed and fails with a transient error when they are not. Cairn's own retry layer is
//! switched off here (`retry-max-attempts = 1`) so only `object_store`'s retries are at work.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_snapshot::StorageRoot;
use object_store::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A proxy to `upstream` whose first `fail` connections each get one `503` answer.
struct FlakyProxy {
    addr: String,
    answered_503: Arc<AtomicU32>,
}

fn flaky_proxy(upstream: String, fail: u32) -> std::io::Result<FlakyProxy> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = format!("http://{}", listener.local_addr()?);
    let answered_503 = Arc::new(AtomicU32::new(0));
    let counter = answered_503.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            if (i as u32) < fail {
                let _ = answer_503(conn, &counter);
                continue;
            }
            let Ok(up) = TcpStream::connect(&upstream) else {
                continue;
            };
            pipe(conn, up);
        }
    });
    Ok(FlakyProxy { addr, answered_503 })
}

/// Reads one request (headers and a `Content-Length` body), answers 503, closes. `answered`
/// counts the answer *before* it is sent: the client may assert on it as soon as it has read it.
fn answer_503(conn: TcpStream, answered: &AtomicU32) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    std::io::copy(&mut r.by_ref().take(len as u64), &mut std::io::sink())?;
    let mut w = conn;
    answered.fetch_add(1, Ordering::SeqCst);
    w.write_all(
        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    w.shutdown(Shutdown::Both)
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (mut a, mut b) = (a, b);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut b, &mut a2);
        let _ = a2.shutdown(Shutdown::Write);
    });
}

#[test]
fn s3_requests_are_retried_by_object_store() -> TestResult {
    let Some(t) = support::s3_target("s3_retry") else {
        return Ok(());
    };
    let upstream = t
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let rt = tokio::runtime::Runtime::new()?;
    for (max_retries, should_succeed) in [(3usize, true), (0, false)] {
        let proxy = flaky_proxy(upstream.clone(), 2)?;
        let mut o = t.options.clone();
        o.s3_endpoint = Some(proxy.addr.clone());
        o.s3_max_retries = max_retries;
        o.s3_retry_timeout = Duration::from_secs(30);
        o.retry_max_attempts = 1;
        let s = StorageRoot::from_url(&t.url, &o)?;
        let p = Path::from(format!("{}/retried", s.root()));
        let r = rt.block_on(s.put(&p, Bytes::from_static(b"payload")));
        match (should_succeed, r) {
            (true, Ok(())) => {
                assert_eq!(proxy.answered_503.load(Ordering::SeqCst), 2);
                assert_eq!(rt.block_on(s.get(&p))?, Bytes::from_static(b"payload"));
                rt.block_on(s.delete(&p))?;
            }
            (false, Err(e)) => {
                assert!(e.is_transient(), "a 503 is transient: {e}");
                assert_eq!(proxy.answered_503.load(Ordering::SeqCst), 1);
                assert_eq!(s.retries(), 0);
            }
            (want, got) => {
                panic!("max_retries {max_retries}: expected success={want}, got {got:?}")
            }
        }
    }
    Ok(())
}
