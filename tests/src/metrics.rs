//! Reading a Prometheus `/metrics` endpoint: a plain HTTP/1.1 GET over a std `TcpStream`
//! (no client library, so the test sees exactly what a scraper sees), a parser for the text
//! exposition format, and [`wait_for`], which polls until a condition holds (Ember's TURN
//! workers publish their counters once a second).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One scrape: every sample line.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// GET `/metrics`; the body, or why not.
pub fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: text/plain\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let raw = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of HTTP headers")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let body = if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Metrics::parse(&body))
}

fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunk header")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size: {e}"))?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or("short chunk")?);
        body = rest.get(size + 2..).ok_or("short chunk")?;
    }
}

impl Metrics {
    /// Parses the text exposition format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = parse_sample(line) {
                samples.push(s);
            }
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// Whether any sample of metric `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Sum of the samples of `name` whose labels include all of `labels`; 0 when none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(i) => {
            let end = line[i..].find('}')? + i;
            (
                &line[..i],
                parse_labels(&line[i + 1..end])?,
                &line[end + 1..],
            )
        }
        None => {
            let i = line.find(char::is_whitespace)?;
            (&line[..i], Vec::new(), &line[i..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, e) = chars.next()?;
                    value.push(if e == 'n' { '\n' } else { e });
                }
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key, value));
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(out)
}

/// Scrapes until `cond` holds, at most `timeout`; returns the satisfying scrape or panics
/// with `what` and the last scrape.
pub fn wait_for(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + timeout;
    let mut last = Err("never scraped".to_string());
    while Instant::now() < deadline {
        last = scrape(addr);
        if let Ok(m) = &last {
            if cond(m) {
                return m.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last {
        Ok(m) => panic!(
            "metrics: {what} did not happen within {timeout:?}; last scrape:\n{}",
            m.text
                .lines()
                .filter(|l| l.starts_with("ember_turn"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Err(e) => panic!("metrics: {what}: cannot scrape {addr}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition_format() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nember_turn_allocations{transport=\"udp\"} 2\n\
             ember_turn_allocations{transport=\"tcp\"} 1\nember_turn_auth_failures_total 3\n\
             odd{a=\"x\\\"y,z\",b=\"2\"} 1.5e0\n",
        );
        assert_eq!(m.get("ember_turn_allocations", &[]), 3.0);
        assert_eq!(
            m.get("ember_turn_allocations", &[("transport", "udp")]),
            2.0
        );
        assert_eq!(m.get("ember_turn_auth_failures_total", &[]), 3.0);
        assert_eq!(m.get("odd", &[("a", "x\"y,z"), ("b", "2")]), 1.5);
        assert!(!m.has("missing"));
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
