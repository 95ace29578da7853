//! UTC calendar arithmetic for the auth layers, without a date library: Unix seconds to and
//! from civil dates, the ISO 8601 basic form SigV4 and `X-Qiniu-Date` use
//! (`20130524T000000Z`), and the IMF-fixdate form of the HTTP `Date` header
//! (`Fri, 24 May 2013 00:00:00 GMT`).
//!
//! Every parser returns `None` on anything out of range instead of panicking: these strings
//! come from the network.

use std::fmt;

/// A UTC date and time with one-second resolution, years 1970..=9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn is_leap(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Largest Unix time this type represents (9999-12-31T23:59:59Z).
pub const MAX_UNIX: u64 = 253_402_300_799;

fn two_digits(b: &[u8]) -> Option<u8> {
    match b {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

fn four_digits(b: &[u8]) -> Option<u16> {
    if b.len() != 4 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')))
}

impl UtcDateTime {
    /// Builds a validated value; `None` when any field is out of range.
    pub fn new(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<Self> {
        if !(1970..=9999).contains(&year)
            || !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        Some(UtcDateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// The date and time of a Unix timestamp; clamps beyond year 9999.
    pub fn from_unix(secs: u64) -> Self {
        let secs = secs.min(MAX_UNIX) as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        UtcDateTime {
            year: y as u16,
            month: m as u8,
            day: d as u8,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> u64 {
        let days = days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        secs.max(0) as u64
    }

    /// Parses the ISO 8601 basic form `YYYYMMDDTHHMMSSZ` (SigV4 `X-Amz-Date`, `X-Qiniu-Date`).
    pub fn parse_iso8601_basic(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return None;
        }
        UtcDateTime::new(
            four_digits(&b[0..4])?,
            two_digits(&b[4..6])?,
            two_digits(&b[6..8])?,
            two_digits(&b[9..11])?,
            two_digits(&b[11..13])?,
            two_digits(&b[13..15])?,
        )
    }

    /// Parses the IMF-fixdate form of RFC 9110 (`Fri, 24 May 2013 00:00:00 GMT`); the weekday
    /// name is checked for shape only.
    pub fn parse_http_date(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 29
            || &b[3..5] != b", "
            || b[7] != b' '
            || b[11] != b' '
            || b[16] != b' '
            || b[19] != b':'
            || b[22] != b':'
            || &b[25..] != b" GMT"
            || !WEEKDAYS.iter().any(|w| w.as_bytes() == &b[0..3])
        {
            return None;
        }
        let month = MONTHS.iter().position(|m| m.as_bytes() == &b[8..11])? as u8 + 1;
        UtcDateTime::new(
            four_digits(&b[12..16])?,
            month,
            two_digits(&b[5..7])?,
            two_digits(&b[17..19])?,
            two_digits(&b[20..22])?,
            two_digits(&b[23..25])?,
        )
    }

    /// `YYYYMMDDTHHMMSSZ`.
    pub fn iso8601_basic(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `YYYYMMDD`, the date of a SigV4 credential scope.
    pub fn date_stamp(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// ISO 8601 extended form with milliseconds, as S3 prints times in error documents
    /// (`2013-05-24T00:00:00.000Z`).
    pub fn iso8601_extended(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

impl fmt::Display for UtcDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.iso8601_basic())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_round_trip_known_points() {
        let t = UtcDateTime::parse_iso8601_basic("20130524T000000Z").unwrap();
        assert_eq!(t.unix(), 1_369_353_600);
        assert_eq!(UtcDateTime::from_unix(1_369_353_600), t);
        assert_eq!(
            UtcDateTime::from_unix(0).iso8601_basic(),
            "19700101T000000Z"
        );
        assert_eq!(UtcDateTime::from_unix(951_782_400).date_stamp(), "20000229");
        assert_eq!(
            UtcDateTime::from_unix(MAX_UNIX).iso8601_basic(),
            "99991231T235959Z"
        );
        assert_eq!(UtcDateTime::from_unix(u64::MAX).unix(), MAX_UNIX);
        for secs in (0..MAX_UNIX).step_by(86_399 * 97 + 13) {
            assert_eq!(UtcDateTime::from_unix(secs).unix(), secs);
        }
    }

    #[test]
    fn iso8601_rejects_garbage() {
        for bad in [
            "",
            "20130524T000000",
            "20130524T000000z",
            "20131324T000000Z",
            "20130532T000000Z",
            "20130229T000000Z",
            "20130524T240000Z",
            "20130524T006000Z",
            "2013052AT000000Z",
            "19690524T000000Z",
            "+0130524T000000Z",
            "20130524 000000Z",
            "２０１３0524T000000Z",
        ] {
            assert_eq!(UtcDateTime::parse_iso8601_basic(bad), None, "{bad:?}");
        }
        assert!(UtcDateTime::parse_iso8601_basic("20000229T235959Z").is_some());
    }

    #[test]
    fn http_date() {
        let t = UtcDateTime::parse_http_date("Fri, 24 May 2013 00:00:00 GMT").unwrap();
        assert_eq!(t.iso8601_basic(), "20130524T000000Z");
        assert_eq!(t.iso8601_extended(), "2013-05-24T00:00:00.000Z");
        for bad in [
            "Fri, 24 May 2013 00:00:00 UTC",
            "Fri, 24 Mai 2013 00:00:00 GMT",
            "Fri 24 May 2013 00:00:00 GMT",
            "Xyz, 24 May 2013 00:00:00 GMT",
            "Fri, 31 Jun 2013 00:00:00 GMT",
            "Fri, 24 May 2013 00:00:00 GMTX",
            "Fri, 24 May 2013 0é:00:00 GMT",
        ] {
            assert_eq!(UtcDateTime::parse_http_date(bad), None, "{bad:?}");
        }
    }
}
