//! Fuzzes the S3 request-body parsers (`ember_storage::s3::xml`) and `Range` parsing
//! (`s3::api::parse_range`).
//!
//! The first input byte picks a mode:
//!
//! - raw XML (half the inputs): `parse_document`, `parse_delete`, `parse_complete_multipart`
//!   and `parse_create_bucket` on the rest. Nothing panics; a parsed `Delete` has 1 to 1000
//!   keys, a parsed `CompleteMultipartUpload` 1 to `MAX_PART_NUMBER` parts; a whitespace-only
//!   body is no `CreateBucketConfiguration`; the typed parsers agree with `parse_document` on
//!   the root element.
//! - written XML: keys, ETags, part numbers and a location constraint from the input are
//!   written with the crate's `XmlWriter` (which escapes them) and must parse back unchanged.
//! - ranges: `parse_range` on an arbitrary header value and size: a `Partial` range is
//!   non-empty and inside the object; and on a well-formed `bytes=a-b` / `bytes=a-` /
//!   `bytes=-n` built from input numbers, the result equals an independent model.
#![no_main]

use ember_storage::backend::MAX_PART_NUMBER;
use ember_storage::s3::api::{parse_range, RangeSpec};
use ember_storage::s3::xml::{
    parse_complete_multipart, parse_create_bucket, parse_delete, parse_document, XmlWriter,
    MAX_DELETE_OBJECTS,
};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 | 1 => raw_xml(rest),
        2 => {
            let _ = written_xml(&mut Unstructured::new(rest));
        }
        _ => ranges(rest),
    }
});

fn raw_xml(body: &[u8]) {
    let doc = parse_document(body);
    match parse_delete(body) {
        Ok(d) => {
            assert!((1..=MAX_DELETE_OBJECTS).contains(&d.keys.len()));
            assert_eq!(doc.as_ref().map(|r| r.name.as_str()), Ok("Delete"));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match parse_complete_multipart(body) {
        Ok(parts) => {
            assert!((1..=MAX_PART_NUMBER as usize).contains(&parts.len()));
            assert_eq!(
                doc.as_ref().map(|r| r.name.as_str()),
                Ok("CompleteMultipartUpload")
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let blank = body.iter().all(u8::is_ascii_whitespace);
    match parse_create_bucket(body) {
        Ok(Some(loc)) => {
            assert!(!blank);
            assert!(!loc.is_empty() && loc == loc.trim());
            assert_eq!(
                doc.as_ref().map(|r| r.name.as_str()),
                Ok("CreateBucketConfiguration")
            );
        }
        Ok(None) => {}
        Err(e) => {
            assert!(!blank);
            assert!(!e.to_string().is_empty());
        }
    }
}

type R<T> = libfuzzer_sys::arbitrary::Result<T>;

fn string(u: &mut Unstructured<'_>, max: usize) -> R<String> {
    let n = u.int_in_range(0..=max)?;
    let b = u.bytes(n.min(u.len()))?;
    Ok(String::from_utf8_lossy(b).into_owned())
}

/// Text XML 1.0 can carry: no NUL (not even as a character reference).
fn xml_text(u: &mut Unstructured<'_>, max: usize) -> R<String> {
    Ok(string(u, max)?.replace('\0', ""))
}

fn written_xml(u: &mut Unstructured<'_>) -> R<()> {
    // Multi-object delete.
    let quiet: Option<bool> = u.arbitrary()?;
    let mut keys = Vec::new();
    for _ in 0..u.int_in_range(1..=8)? {
        keys.push(xml_text(u, 24)?);
    }
    let mut w = if u.arbitrary()? {
        XmlWriter::new("Delete")
    } else {
        XmlWriter::new_plain("Delete")
    };
    if let Some(q) = quiet {
        w.elem("Quiet", if q { "true" } else { "false" });
    }
    for k in &keys {
        w.open("Object").elem("Key", k);
        if u.arbitrary()? {
            w.elem("VersionId", &xml_text(u, 8)?);
        }
        w.close();
    }
    let doc = w.finish();
    let d = parse_delete(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc:?}: {e}"));
    assert_eq!(d.keys, keys, "{doc:?}");
    assert_eq!(d.quiet, quiet == Some(true));

    // Complete multipart upload.
    let mut parts = Vec::new();
    for _ in 0..u.int_in_range(1..=8)? {
        let n: u32 = u.arbitrary()?;
        let etag = xml_text(u, 40)?;
        parts.push((n, etag));
    }
    let mut w = XmlWriter::new("CompleteMultipartUpload");
    for (n, etag) in &parts {
        w.open("Part");
        if u.arbitrary()? {
            w.elem("ETag", etag).elem("PartNumber", &n.to_string());
        } else {
            w.elem("PartNumber", &n.to_string()).elem("ETag", etag);
        }
        w.close();
    }
    let doc = w.finish();
    let got = parse_complete_multipart(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc:?}: {e}"));
    let want: Vec<(u32, String)> = parts
        .iter()
        .map(|(n, e)| (*n, e.trim().trim_matches('"').to_owned()))
        .collect();
    assert_eq!(got, want, "{doc:?}");

    // Create-bucket configuration.
    let loc = xml_text(u, 20)?;
    let mut w = XmlWriter::new("CreateBucketConfiguration");
    w.elem("LocationConstraint", &loc);
    let doc = w.finish();
    let got = parse_create_bucket(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc:?}: {e}"));
    let want = Some(loc.trim().to_owned()).filter(|l| !l.is_empty());
    assert_eq!(got, want, "{doc:?}");
    Ok(())
}

fn ranges(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(size) = pick_size(&mut u) else { return };
    let Ok(structured) = u.arbitrary::<bool>() else {
        return;
    };
    if structured {
        let _ = model_range(&mut u, size);
        return;
    }
    let value = String::from_utf8_lossy(u.take_rest()).into_owned();
    check_range(&value, size);
}

fn pick_size(u: &mut Unstructured<'_>) -> R<u64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.int_in_range(0..=16)?,
        1 => u.arbitrary::<u32>()?.into(),
        2 => u64::MAX - u.int_in_range(0..=2)?,
        _ => u.arbitrary()?,
    })
}

fn check_range(value: &str, size: u64) -> RangeSpec {
    let r = parse_range(Some(value), size);
    if let RangeSpec::Partial(range) = &r {
        assert!(
            range.start < range.end && range.end <= size,
            "{value:?} on {size} bytes gave {range:?}"
        );
    }
    r
}

fn number(u: &mut Unstructured<'_>, size: u64) -> R<u64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.int_in_range(0..=20)?,
        1 => size
            .saturating_add(u.int_in_range(0..=2)?)
            .saturating_sub(u.int_in_range(0..=2)?),
        2 => u64::MAX - u.int_in_range(0..=1)?,
        _ => u.arbitrary()?,
    })
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against what RFC 9110 and S3 say they mean.
fn model_range(u: &mut Unstructured<'_>, size: u64) -> R<()> {
    let a = number(u, size)?;
    let b = number(u, size)?;
    let prefix = *u.choose(&["bytes=", "BYTES=", " bytes= ", "Bytes="])?;
    let (value, want) = match u.int_in_range(0..=2)? {
        0 => {
            let want = if b < a {
                RangeSpec::Full
            } else if a >= size {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Partial(a..size.min(b.saturating_add(1)))
            };
            (format!("{prefix}{a}-{b}"), want)
        }
        1 => {
            let want = if a >= size {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Partial(a..size)
            };
            (format!("{prefix}{a}-"), want)
        }
        _ => {
            let want = if a == 0 || size == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Partial(size.saturating_sub(a)..size)
            };
            (format!("{prefix}-{a}"), want)
        }
    };
    assert_eq!(check_range(&value, size), want, "{value:?} on {size} bytes");
    // Several ranges are served whole.
    assert_eq!(check_range(&format!("{value},0-0"), size), RangeSpec::Full);
    Ok(())
}
