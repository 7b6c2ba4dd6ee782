//! `load`: standalone credential deploys from many clients at once.
//!
//! `--dir D` holds one folder per client (`D/c00`, `D/c01`, …), each with bundles that sort in
//! the order they were made (so a client never sends a stale bundle to its own container).
//! Every client is a thread with one keep-alive HTTP/1.1 connection that posts its bundles one
//! after the other; all start together. A deploy is acknowledged when the answer is 2xx (the
//! receiver answers 2xx only once the deploy is durable). Prints one line of `key=value`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::Opts;

struct Answer {
    status: u16,
    elapsed: Duration,
}

/// One HTTP/1.1 request on `conn` (reconnecting when the server closed it); the status.
fn post(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: &str,
    head: &str,
    body: &[u8],
) -> Result<u16, String> {
    for attempt in 0..2 {
        if conn.is_none() {
            let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            *conn = Some(BufReader::new(s));
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let sent = c
            .get_mut()
            .write_all(head.as_bytes())
            .and_then(|()| c.get_mut().write_all(body));
        match sent
            .map_err(|e| e.to_string())
            .and_then(|()| read_answer(c))
        {
            Ok((status, close)) => {
                if close {
                    *conn = None;
                }
                return Ok(status);
            }
            Err(e) if attempt == 0 => {
                // A kept-alive connection the server had closed: retry once on a new one.
                let _ = e;
                *conn = None;
            }
            Err(e) => return Err(e),
        }
    }
    Err("no answer".into())
}

/// Reads one response; returns its status and whether the connection must be closed.
fn read_answer(c: &mut BufReader<TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    if c.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("connection closed".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    loop {
        line.clear();
        if c.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed in headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            c.read_line(&mut line).map_err(|e| e.to_string())?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut skip = vec![0; n + 2];
            c.read_exact(&mut skip).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        let mut skip = vec![0; n];
        c.read_exact(&mut skip).map_err(|e| e.to_string())?;
    } else {
        close = true;
    }
    Ok((status, close))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `load --url http://127.0.0.1:PORT[,http://…] --token-file F --dir D`: with several URLs
/// (nodes of one store), client `i` sends to URL `i mod n`.
pub fn run(o: &Opts) -> Result<(), String> {
    let addrs: Vec<String> = o
        .str("url")?
        .split(',')
        .map(|url| {
            url.strip_prefix("http://")
                .map(|a| a.trim_end_matches('/').to_owned())
                .ok_or("--url must be http://HOST:PORT, or several separated by commas")
        })
        .collect::<Result<_, _>>()?;
    let token = fs::read_to_string(o.str("token-file")?).map_err(|e| e.to_string())?;
    let token = token.trim();
    let dir = PathBuf::from(o.str("dir")?);
    let mut clients: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in &dirs {
        let mut files: Vec<PathBuf> = fs::read_dir(d)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "fpk"))
            .collect();
        files.sort();
        clients.push(
            files
                .iter()
                .map(|f| fs::read(f).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
        );
    }
    if clients.is_empty() {
        return Err(format!("no client folders in {}", dir.display()));
    }
    let barrier = Arc::new(Barrier::new(clients.len() + 1));
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, bundles)| {
            let barrier = barrier.clone();
            let addr = addrs[i % addrs.len()].clone();
            let token = token.to_owned();
            std::thread::spawn(move || -> Result<Vec<Answer>, String> {
                let mut conn = None;
                let mut out = Vec::with_capacity(bundles.len());
                barrier.wait();
                for b in &bundles {
                    let head = format!(
                        "POST /v1/deployments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/zip\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    );
                    let t = Instant::now();
                    let status = post(&mut conn, &addr, &head, b)?;
                    out.push(Answer {
                        status,
                        elapsed: t.elapsed(),
                    });
                }
                Ok(out)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut answers = Vec::new();
    for h in handles {
        answers.extend(h.join().map_err(|_| "a client thread panicked")??);
    }
    let wall = start.elapsed().as_secs_f64();
    let ok = answers
        .iter()
        .filter(|a| (200..300).contains(&a.status))
        .count();
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let counts: Vec<String> = statuses
        .iter()
        .map(|s| format!("{s}:{}", answers.iter().filter(|a| a.status == *s).count()))
        .collect();
    let mut lat: Vec<Duration> = answers.iter().map(|a| a.elapsed).collect();
    lat.sort_unstable();
    println!(
        "total={} ok={ok} seconds={wall:.3} rate={:.1} p50_ms={:.2} p99_ms={:.2} statuses={}",
        answers.len(),
        ok as f64 / wall,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        counts.join(",")
    );
    Ok(())
}
