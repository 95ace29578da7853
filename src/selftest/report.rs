//! The self-test's results: one [`Check`] per line, rendered as a table for people or as
//! one JSON document for scripts; and how an IP address is classified (public or not).

use std::io::Write;
use std::net::IpAddr;

use serde::Serialize;

use super::ice::Gathered;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Skip => "SKIP",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier for scripts, e.g. "allocate.tcp".
    pub id: String,
    /// What was checked, e.g. "allocate tcp".
    pub name: String,
    pub status: Status,
    /// The figure or the failure, one line.
    pub result: String,
    /// On failure or warning: the likely cause and the config key that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Machine-readable details (addresses, timings), check-specific.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Check {
    pub fn new(id: impl Into<String>, name: impl Into<String>, status: Status) -> Check {
        Check {
            id: id.into(),
            name: name.into(),
            status,
            result: String::new(),
            hint: None,
            details: serde_json::Value::Null,
        }
    }
    pub fn result(mut self, r: impl Into<String>) -> Check {
        self.result = r.into();
        self
    }
    pub fn hint(mut self, h: impl Into<String>) -> Check {
        self.hint = Some(h.into());
        self
    }
    pub fn details(mut self, d: serde_json::Value) -> Check {
        self.details = d;
        self
    }
}

/// Counts per status.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The target as given.
    pub target: String,
    /// Host name and the address tested.
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub transports: Vec<String>,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice: Option<Gathered>,
    pub summary: Summary,
    /// Whether the exit status is 0.
    pub ok: bool,
    pub strict: bool,
}

impl Report {
    /// Fills `summary` and `ok` from the checks.
    pub fn finish(&mut self) {
        let mut s = Summary::default();
        for c in &self.checks {
            match c.status {
                Status::Pass => s.pass += 1,
                Status::Warn => s.warn += 1,
                Status::Fail => s.fail += 1,
                Status::Skip => s.skip += 1,
            }
        }
        self.summary = s;
        self.ok = s.fail == 0 && (!self.strict || s.warn == 0);
    }

    /// The human-readable table.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "Ember relay self-test of {} ({}; transports {})",
            self.target,
            self.address.as_deref().unwrap_or("unresolved"),
            self.transports.join(",")
        )?;
        writeln!(out)?;
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(out, "  {:<6}{:<width$}  RESULT", "", "CHECK")?;
        for c in &self.checks {
            writeln!(
                out,
                "  {:<6}{:<width$}  {}",
                c.status.label(),
                c.name,
                c.result
            )?;
            if let Some(h) = &c.hint {
                writeln!(out, "  {:<6}{:<width$}  hint: {h}", "", "")?;
            }
        }
        if let Some(ice) = &self.ice {
            writeln!(out)?;
            writeln!(
                out,
                "ICE candidates gathered by webrtc-rs ({} ms{}):",
                ice.elapsed_ms,
                if ice.complete { "" } else { ", timed out" }
            )?;
            if ice.candidates.is_empty() {
                writeln!(out, "  (none)")?;
            }
            for c in &ice.candidates {
                let related = match (&c.related_address, c.related_port) {
                    (Some(a), Some(p)) => format!("  (from {a}:{p})"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "  {:<6}{:<4}{}:{}{related}",
                    c.kind, c.protocol, c.address, c.port
                )?;
            }
        }
        let s = &self.summary;
        writeln!(out)?;
        writeln!(
            out,
            "{}: {} passed, {} warning{}, {} failed, {} skipped{}",
            if self.ok { "OK" } else { "FAILED" },
            s.pass,
            s.warn,
            if s.warn == 1 { "" } else { "s" },
            s.fail,
            s.skip,
            if self.strict && s.warn > 0 {
                " (--strict: warnings fail)"
            } else {
                ""
            }
        )
    }
}

/// Where an address can be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Routable on the Internet.
    Public,
    /// Not routable on the Internet; the text says which kind.
    NotPublic(&'static str),
}

/// Classifies an address for the "is the relay address public" check.
pub fn classify(ip: IpAddr) -> Reach {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_unspecified() {
                Reach::NotPublic("unspecified")
            } else if a.is_loopback() {
                Reach::NotPublic("loopback")
            } else if a.is_private() {
                Reach::NotPublic("private, RFC 1918")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Reach::NotPublic("carrier-grade NAT, RFC 6598")
            } else if a.is_link_local() {
                Reach::NotPublic("link-local")
            } else if a.is_documentation() {
                Reach::NotPublic("documentation range, RFC 5737")
            } else if o[0] == 198 && (o[1] == 18 || o[1] == 19) {
                Reach::NotPublic("benchmarking range, RFC 2544")
            } else if o[0] == 0 || o[0] >= 240 || a.is_multicast() || a.is_broadcast() {
                Reach::NotPublic("reserved")
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            if a.is_unspecified() {
                Reach::NotPublic("unspecified")
            } else if a.is_loopback() {
                Reach::NotPublic("loopback")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Reach::NotPublic("unique local, RFC 4193")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Reach::NotPublic("link-local")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Reach::NotPublic("documentation range, RFC 3849")
            } else if a.is_multicast() {
                Reach::NotPublic("reserved")
            } else {
                Reach::Public
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for (ip, public) in [
            ("8.8.8.8", true),
            ("203.0.113.5", false),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("100.128.0.1", true),
            ("169.254.1.1", false),
            ("198.18.0.1", false),
            ("2a00:1450::1", true),
            ("::1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:1.1.1.1", true),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(classify(ip) == Reach::Public, public, "{ip}");
        }
    }

    #[test]
    fn exit_status_follows_failures_and_strict_warnings() {
        let mut r = Report {
            target: "turn:x".into(),
            host: "x".into(),
            address: None,
            transports: vec!["udp".into()],
            checks: vec![
                Check::new("a", "a", Status::Pass),
                Check::new("b", "b", Status::Warn).hint("fix it"),
            ],
            ice: None,
            summary: Summary::default(),
            ok: false,
            strict: false,
        };
        r.finish();
        assert!(r.ok);
        r.strict = true;
        r.finish();
        assert!(!r.ok);
        r.strict = false;
        r.checks.push(Check::new("c", "c", Status::Fail));
        r.finish();
        assert!(!r.ok);
        let mut out = Vec::new();
        r.write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("hint: fix it"), "{text}");
        assert!(
            text.contains("FAILED: 1 passed, 1 warning, 1 failed"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][1]["status"], "warn");
        assert_eq!(json["summary"]["fail"], 1);
    }
}
