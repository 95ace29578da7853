//! Qiniu's upload variables: magic variables (`$(bucket)`, `$(key)`, `$(etag)`, `$(fsize)`,
//! `$(mimeType)`, `$(endUser)`, `$(fname)`, `$(ext)`, `$(persistentId)`, `$(year)`, `$(mon)`,
//! `$(day)`, `$(hour)`, `$(min)`, `$(sec)`) and custom variables (`$(x:name)`, from the
//! upload's `x:name` form fields), written `$(var)` or `${var}`.
//!
//! - In `returnBody` (a JSON text) a variable outside a JSON string becomes a JSON value
//!   (`"..."` with escaping, a bare number for `fsize`, `null` when unknown or absent); inside
//!   a JSON string it becomes the escaped text (nothing when absent). So both
//!   `{"key":$(key)}` and `{"key":"$(key)"}` give valid JSON for any key.
//! - In `saveKey` a variable becomes its plain text (nothing when absent).
//!
//! Sub-fields Ember does not compute (`$(imageInfo.width)`, `$(exif.*)`, `$(avinfo.*)`) are
//! absent. `$(ext)` carries its leading dot (`.jpg`), taken from `fname`, else from the MIME
//! type. Time variables are the upload time in UTC, zero-padded (`$(mon)` = `05`).

use std::borrow::Cow;

use crate::time::UtcDateTime;

/// Longest variable name looked at; longer `$(...)` runs stay literal.
const MAX_NAME: usize = 128;

/// What the variables evaluate to for one upload.
#[derive(Debug, Clone, Copy, Default)]
pub struct MagicVars<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub etag: &'a str,
    pub fsize: u64,
    pub mime_type: &'a str,
    pub end_user: Option<&'a str>,
    /// Original file name (the form's file part filename, or `fname` of resumable uploads).
    pub fname: Option<&'a str>,
    pub persistent_id: Option<&'a str>,
    /// Upload time, Unix seconds.
    pub upload_time: u64,
    /// Custom variables with their `x:` prefix: `("x:album", "summer")`.
    pub custom: &'a [(&'a str, &'a str)],
}

enum Value<'a> {
    Str(Cow<'a, str>),
    Num(u64),
    Absent,
}

fn ext_from_mime(mime: &str) -> &'static str {
    let base = mime.split(';').next().unwrap_or("").trim();
    const TABLE: &[(&str, &str)] = &[
        ("image/jpeg", ".jpg"),
        ("image/jpg", ".jpg"),
        ("image/png", ".png"),
        ("image/gif", ".gif"),
        ("image/webp", ".webp"),
        ("image/heic", ".heic"),
        ("image/bmp", ".bmp"),
        ("image/svg+xml", ".svg"),
        ("video/mp4", ".mp4"),
        ("video/quicktime", ".mov"),
        ("video/webm", ".webm"),
        ("audio/mpeg", ".mp3"),
        ("audio/mp4", ".m4a"),
        ("audio/aac", ".aac"),
        ("audio/amr", ".amr"),
        ("audio/ogg", ".ogg"),
        ("audio/wav", ".wav"),
        ("text/plain", ".txt"),
        ("text/html", ".html"),
        ("application/json", ".json"),
        ("application/pdf", ".pdf"),
        ("application/zip", ".zip"),
    ];
    TABLE
        .iter()
        .find(|(m, _)| m.eq_ignore_ascii_case(base))
        .map(|(_, e)| *e)
        .unwrap_or("")
}

impl<'a> MagicVars<'a> {
    /// `$(ext)`: the file name's extension with its dot, else one for the MIME type, else empty.
    pub fn ext(&self) -> Cow<'a, str> {
        if let Some(fname) = self.fname {
            let base = fname.rsplit(['/', '\\']).next().unwrap_or(fname);
            if let Some(i) = base.rfind('.') {
                if i + 1 < base.len() {
                    return Cow::Borrowed(&base[i..]);
                }
            }
        }
        Cow::Borrowed(ext_from_mime(self.mime_type))
    }

    fn value(&self, name: &str) -> Value<'a> {
        let opt = |v: Option<&'a str>| v.map_or(Value::Absent, |s| Value::Str(Cow::Borrowed(s)));
        let time = || UtcDateTime::from_unix(self.upload_time);
        let two = |n: u8| Value::Str(Cow::Owned(format!("{n:02}")));
        match name {
            "bucket" => Value::Str(Cow::Borrowed(self.bucket)),
            "key" => Value::Str(Cow::Borrowed(self.key)),
            "etag" => Value::Str(Cow::Borrowed(self.etag)),
            "fsize" => Value::Num(self.fsize),
            "mimeType" => Value::Str(Cow::Borrowed(self.mime_type)),
            "endUser" => opt(self.end_user),
            "fname" => opt(self.fname),
            "persistentId" => opt(self.persistent_id),
            "ext" => Value::Str(self.ext()),
            "year" => Value::Str(Cow::Owned(format!("{:04}", time().year))),
            "mon" => two(time().month),
            "day" => two(time().day),
            "hour" => two(time().hour),
            "min" => two(time().minute),
            "sec" => two(time().second),
            custom if custom.starts_with("x:") => self
                .custom
                .iter()
                .find(|(n, _)| *n == custom)
                .map_or(Value::Absent, |(_, v)| Value::Str(Cow::Borrowed(*v))),
            _ => Value::Absent,
        }
    }
}

/// If `rest` starts a variable (`$(name)` / `${name}`), its name and total length.
fn variable_at(rest: &str) -> Option<(&str, usize)> {
    let b = rest.as_bytes();
    let close = match b.get(1) {
        Some(b'(') => b')',
        Some(b'{') => b'}',
        _ => return None,
    };
    let end = b
        .iter()
        .skip(2)
        .take(MAX_NAME + 1)
        .position(|&c| c == close)?
        + 2;
    let name = &rest[2..end];
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b':' | b'_' | b'-'));
    valid.then_some((name, end + 1))
}

/// JSON string escaping without the surrounding quotes.
fn push_json_escaped(out: &mut String, s: &str) {
    let quoted = serde_json::Value::String(s.to_owned()).to_string();
    out.push_str(&quoted[1..quoted.len() - 1]);
}

/// Expands variables in a `returnBody` template, JSON-aware (see the module documentation).
pub fn expand_return_body(template: &str, vars: &MagicVars<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < template.len() {
        let rest = &template[i..];
        if rest.starts_with('$') && !escaped {
            if let Some((name, len)) = variable_at(rest) {
                match (vars.value(name), in_string) {
                    (Value::Str(s), true) => push_json_escaped(&mut out, &s),
                    (Value::Str(s), false) => {
                        out.push('"');
                        push_json_escaped(&mut out, &s);
                        out.push('"');
                    }
                    (Value::Num(n), _) => out.push_str(&n.to_string()),
                    (Value::Absent, true) => {}
                    (Value::Absent, false) => out.push_str("null"),
                }
                i += len;
                continue;
            }
        }
        let Some(c) = rest.chars().next() else { break };
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Expands variables in a `saveKey` template as plain text.
pub fn expand_save_key(template: &str, vars: &MagicVars<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut i = 0;
    while i < template.len() {
        let rest = &template[i..];
        if rest.starts_with('$') {
            if let Some((name, len)) = variable_at(rest) {
                match vars.value(name) {
                    Value::Str(s) => out.push_str(&s),
                    Value::Num(n) => out.push_str(&n.to_string()),
                    Value::Absent => {}
                }
                i += len;
                continue;
            }
        }
        let Some(c) = rest.chars().next() else { break };
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The body Qiniu returns when the policy has no `returnBody`: `{"hash":...,"key":...}`.
pub fn default_return_body(key: &str, etag: &str) -> String {
    serde_json::json!({ "hash": etag, "key": key }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> MagicVars<'static> {
        MagicVars {
            bucket: "media",
            key: "a \"quoted\"\\key\n.jpg",
            etag: "Fto5o-5ea0sNMlW_75VgGJCv2AcJ",
            fsize: 1234,
            mime_type: "image/jpeg",
            end_user: Some("user-7"),
            fname: Some("照片.JPG"),
            persistent_id: None,
            upload_time: 1_369_353_600 + 3_723, // 2013-05-24T01:02:03Z
            custom: &[("x:album", "summer \u{1}"), ("x:n", "5")],
        }
    }

    #[test]
    fn return_body_unquoted_vars_become_json_values() {
        let body = expand_return_body(
            r#"{"key":$(key),"hash":$(etag),"size":$(fsize),"w":$(imageInfo.width),"u":$(endUser),"album":$(x:album),"none":$(x:none),"p":${persistentId}}"#,
            &vars(),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["key"], "a \"quoted\"\\key\n.jpg");
        assert_eq!(v["hash"], "Fto5o-5ea0sNMlW_75VgGJCv2AcJ");
        assert_eq!(v["size"], 1234);
        assert!(v["w"].is_null());
        assert_eq!(v["u"], "user-7");
        assert_eq!(v["album"], "summer \u{1}");
        assert!(v["none"].is_null());
        assert!(v["p"].is_null());
    }

    #[test]
    fn return_body_quoted_vars_are_escaped_inside_strings() {
        let body = expand_return_body(
            r#"{"key":"$(key)","msg":"size=$(fsize) \"$(fname)\" $(x:none)end","ext":"$(ext)","t":"$(year)-$(mon)-$(day)T$(hour):$(min):$(sec)","bucket":"${bucket}"}"#,
            &vars(),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["key"], "a \"quoted\"\\key\n.jpg");
        assert_eq!(v["msg"], "size=1234 \"照片.JPG\" end");
        assert_eq!(v["ext"], ".JPG");
        assert_eq!(v["t"], "2013-05-24T01:02:03");
        assert_eq!(v["bucket"], "media");
    }

    #[test]
    fn return_body_literals_and_edge_cases() {
        let v = vars();
        // An escaped quote inside a string does not end it; `$` without a variable stays.
        assert_eq!(
            expand_return_body(r#"{"a":"\"$(bucket)"}"#, &v),
            r#"{"a":"\"media"}"#
        );
        assert_eq!(
            expand_return_body("$ $( $(unterminated", &v),
            "$ $( $(unterminated"
        );
        assert_eq!(expand_return_body("$(bad name)", &v), "$(bad name)");
        assert_eq!(expand_return_body("", &v), "");
        let long = format!("$({})", "a".repeat(MAX_NAME + 5));
        assert_eq!(expand_return_body(&long, &v), long);
        // Custom variables are looked up with their prefix only.
        assert_eq!(expand_return_body("$(album)", &v), "null");
        assert_eq!(expand_return_body("$(x:n)", &v), "\"5\"");
    }

    #[test]
    fn save_key() {
        let v = vars();
        assert_eq!(
            expand_save_key("$(year)/$(mon)/$(day)/$(etag)$(ext)", &v),
            "2013/05/24/Fto5o-5ea0sNMlW_75VgGJCv2AcJ.JPG"
        );
        assert_eq!(
            expand_save_key("u/${endUser}/$(x:album)$(x:none)", &v),
            "u/user-7/summer \u{1}"
        );
        let no_name = MagicVars { fname: None, ..v };
        assert_eq!(
            expand_save_key("$(etag)$(ext)", &no_name),
            "Fto5o-5ea0sNMlW_75VgGJCv2AcJ.jpg"
        );
        let odd = MagicVars {
            fname: Some("dir/noext"),
            mime_type: "application/x-unknown",
            ..v
        };
        assert_eq!(expand_save_key("k$(ext)", &odd), "k");
        let dot_end = MagicVars {
            fname: Some("trailing."),
            mime_type: "image/png",
            ..v
        };
        assert_eq!(expand_save_key("k$(ext)", &dot_end), "k.png");
    }

    #[test]
    fn default_body() {
        assert_eq!(
            default_return_body("k\"", "h"),
            r#"{"hash":"h","key":"k\""}"#
        );
    }
}
