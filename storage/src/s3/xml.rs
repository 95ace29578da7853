//! The XML documents of the S3 API: response bodies written with a small escaping writer
//! ([`XmlWriter`]) and the few request bodies parsed with quick-xml (`Delete`,
//! `CompleteMultipartUpload`, `CreateBucketConfiguration`).
//!
//! Every response document carries S3's namespace ([`S3_NS`]) and prints times as ISO 8601
//! with milliseconds (`2026-11-23T12:00:00.000Z`). Request parsing is namespace-agnostic (local
//! names only), refuses DTDs and unknown entities, and bounds nesting and counts, so a hostile
//! body costs at most its (capped) size.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::backend::{BucketInfo, ObjectMeta, PartInfo, UploadInfo};
use crate::time::UtcDateTime;

/// S3's XML namespace.
pub const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
/// Most keys in one multi-object delete (S3's limit).
pub const MAX_DELETE_OBJECTS: usize = 1000;
/// Deepest element nesting accepted in a request body.
const MAX_DEPTH: usize = 16;

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Escapes text for element content and attribute values: the five XML special characters,
/// and characters XML 1.0 cannot hold literally (CR would be normalized away, other control
/// characters as numeric references).
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs = |c: char| {
        matches!(c, '&' | '<' | '>' | '"' | '\'') || (c.is_control() && c != '\n' && c != '\t')
    };
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                out.push_str(&format!("&#x{:X};", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// ISO 8601 with milliseconds, UTC: `2026-11-23T12:00:00.000Z`.
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = UtcDateTime::from_unix(d.as_secs()).iso8601_extended();
    // iso8601_extended prints ".000Z"; put the real milliseconds in.
    format!("{}.{:03}Z", &base[..base.len() - 5], d.subsec_millis())
}

/// A minimal XML writer: declaration, nested elements, escaped text.
#[derive(Debug)]
pub struct XmlWriter {
    buf: String,
    stack: Vec<&'static str>,
}

impl XmlWriter {
    /// Starts a document whose root element carries S3's namespace.
    pub fn new(root: &'static str) -> Self {
        let mut w = XmlWriter {
            buf: String::with_capacity(512),
            stack: Vec::new(),
        };
        w.buf
            .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        w.buf.push('<');
        w.buf.push_str(root);
        w.buf.push_str(" xmlns=\"");
        w.buf.push_str(S3_NS);
        w.buf.push_str("\">");
        w.stack.push(root);
        w
    }

    /// Starts a document whose root element has no namespace (S3's `<Error>`).
    pub fn new_plain(root: &'static str) -> Self {
        let mut w = XmlWriter {
            buf: String::with_capacity(512),
            stack: Vec::new(),
        };
        w.buf
            .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        w.open(root);
        w
    }

    /// `<name>`.
    pub fn open(&mut self, name: &'static str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push('>');
        self.stack.push(name);
        self
    }

    /// `<name attr="value" ...>`.
    pub fn open_with(&mut self, name: &'static str, attrs: &[(&str, &str)]) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        for (k, v) in attrs {
            self.buf.push(' ');
            self.buf.push_str(k);
            self.buf.push_str("=\"");
            self.buf.push_str(&escape(v));
            self.buf.push('"');
        }
        self.buf.push('>');
        self.stack.push(name);
        self
    }

    /// Closes the innermost open element.
    pub fn close(&mut self) -> &mut Self {
        if let Some(name) = self.stack.pop() {
            self.buf.push_str("</");
            self.buf.push_str(name);
            self.buf.push('>');
        }
        self
    }

    /// `<name>text</name>`, escaped.
    pub fn elem(&mut self, name: &str, text: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push('>');
        self.buf.push_str(&escape(text));
        self.buf.push_str("</");
        self.buf.push_str(name);
        self.buf.push('>');
        self
    }

    /// [`Self::elem`] when `text` is `Some`.
    pub fn opt(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.elem(name, t);
        }
        self
    }

    /// Closes every open element and returns the document.
    pub fn finish(mut self) -> String {
        while !self.stack.is_empty() {
            self.close();
        }
        self.buf
    }
}

/// The bucket owner printed in listings and ACLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub id: String,
    pub display_name: String,
}

impl Owner {
    fn write(&self, w: &mut XmlWriter, element: &'static str) {
        w.open(element)
            .elem("ID", &self.id)
            .elem("DisplayName", &self.display_name)
            .close();
    }
}

/// An S3 error document: `<Error><Code/><Message/>...<Resource/><RequestId/></Error>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDocument<'a> {
    pub code: &'a str,
    pub message: &'a str,
    /// Extra elements S3 adds for some codes (`BucketName`, `Key`, `RequestTime`, ...).
    pub extra: &'a [(&'static str, String)],
    pub resource: &'a str,
    pub request_id: &'a str,
}

impl ErrorDocument<'_> {
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new_plain("Error");
        w.elem("Code", self.code).elem("Message", self.message);
        for (name, value) in self.extra {
            w.elem(name, value);
        }
        w.elem("Resource", self.resource)
            .elem("RequestId", self.request_id)
            .elem("HostId", self.request_id);
        w.finish()
    }
}

/// `ListAllMyBucketsResult`.
pub fn list_buckets(owner: &Owner, buckets: &[BucketInfo]) -> String {
    let mut w = XmlWriter::new("ListAllMyBucketsResult");
    owner.write(&mut w, "Owner");
    w.open("Buckets");
    for b in buckets {
        w.open("Bucket")
            .elem("Name", &b.name)
            .elem("CreationDate", &iso8601(b.created))
            .close();
    }
    w.close();
    w.finish()
}

/// `LocationConstraint` (empty for us-east-1, as S3 answers).
pub fn location_constraint(region: &str) -> String {
    let mut w = XmlWriter::new("LocationConstraint");
    if region != "us-east-1" {
        w.buf.push_str(&escape(region));
    }
    w.finish()
}

/// An empty `VersioningConfiguration` (versioning never enabled).
pub fn versioning_configuration() -> String {
    XmlWriter::new("VersioningConfiguration").finish()
}

/// An empty `Tagging` document.
pub fn empty_tagging() -> String {
    let mut w = XmlWriter::new("Tagging");
    w.open("TagSet").close();
    w.finish()
}

/// `AccessControlPolicy` granting the owner `FULL_CONTROL`.
pub fn owner_full_control_acl(owner: &Owner) -> String {
    let mut w = XmlWriter::new("AccessControlPolicy");
    owner.write(&mut w, "Owner");
    w.open("AccessControlList").open("Grant");
    w.open_with(
        "Grantee",
        &[
            ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
            ("xsi:type", "CanonicalUser"),
        ],
    )
    .elem("ID", &owner.id)
    .elem("DisplayName", &owner.display_name)
    .close();
    w.elem("Permission", "FULL_CONTROL");
    w.finish()
}

/// Percent-encodes a key for `encoding-type=url` listings: everything except unreserved
/// characters and `/`.
pub fn url_encode_key(s: &str) -> String {
    super::sigv4::uri_encode(s.as_bytes(), false)
}

/// Which ListObjects flavour, with its own paging fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListVersion {
    V1 {
        marker: String,
        /// Only sent when truncated and a delimiter was given (as S3 does).
        next_marker: Option<String>,
    },
    V2 {
        continuation_token: Option<String>,
        next_continuation_token: Option<String>,
        start_after: Option<String>,
        fetch_owner: bool,
    },
}

/// A `ListBucketResult` (ListObjects v1 or v2).
#[derive(Debug, Clone)]
pub struct ListObjectsResult<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub max_keys: usize,
    /// `encoding-type=url`: keys, prefixes, delimiter and markers percent-encoded.
    pub url_encoded: bool,
    pub truncated: bool,
    pub objects: &'a [ObjectMeta],
    pub common_prefixes: &'a [String],
    pub owner: &'a Owner,
    pub version: ListVersion,
}

impl ListObjectsResult<'_> {
    pub fn to_xml(&self) -> String {
        let enc = |s: &str| -> String {
            if self.url_encoded {
                url_encode_key(s)
            } else {
                s.to_owned()
            }
        };
        let mut w = XmlWriter::new("ListBucketResult");
        w.elem("Name", self.bucket)
            .elem("Prefix", &enc(self.prefix));
        let with_owner = match &self.version {
            ListVersion::V1 {
                marker,
                next_marker,
            } => {
                w.elem("Marker", &enc(marker));
                if let Some(n) = next_marker {
                    w.elem("NextMarker", &enc(n));
                }
                true
            }
            ListVersion::V2 {
                continuation_token,
                next_continuation_token,
                start_after,
                fetch_owner,
            } => {
                w.opt("ContinuationToken", continuation_token.as_deref())
                    .opt("NextContinuationToken", next_continuation_token.as_deref());
                if let Some(s) = start_after {
                    w.elem("StartAfter", &enc(s));
                }
                w.elem(
                    "KeyCount",
                    &(self.objects.len() + self.common_prefixes.len()).to_string(),
                );
                *fetch_owner
            }
        };
        w.elem("MaxKeys", &self.max_keys.to_string());
        if let Some(d) = self.delimiter {
            w.elem("Delimiter", &enc(d));
        }
        if self.url_encoded {
            w.elem("EncodingType", "url");
        }
        w.elem("IsTruncated", if self.truncated { "true" } else { "false" });
        for o in self.objects {
            w.open("Contents")
                .elem("Key", &enc(&o.key))
                .elem("LastModified", &iso8601(o.last_modified))
                .elem("ETag", &quote_etag(&o.etag))
                .elem("Size", &o.size.to_string());
            if with_owner {
                self.owner.write(&mut w, "Owner");
            }
            w.elem("StorageClass", "STANDARD").close();
        }
        for p in self.common_prefixes {
            w.open("CommonPrefixes").elem("Prefix", &enc(p)).close();
        }
        w.finish()
    }
}

/// `"etag"`.
pub fn quote_etag(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

/// `CopyObjectResult` (`CopyPartResult` for UploadPartCopy).
pub fn copy_result(root: &'static str, etag: &str, last_modified: SystemTime) -> String {
    let mut w = XmlWriter::new(root);
    w.elem("LastModified", &iso8601(last_modified))
        .elem("ETag", &quote_etag(etag));
    w.finish()
}

/// `InitiateMultipartUploadResult`.
pub fn initiate_multipart(bucket: &str, key: &str, upload_id: &str) -> String {
    let mut w = XmlWriter::new("InitiateMultipartUploadResult");
    w.elem("Bucket", bucket)
        .elem("Key", key)
        .elem("UploadId", upload_id);
    w.finish()
}

/// `CompleteMultipartUploadResult`.
pub fn complete_multipart(location: &str, bucket: &str, key: &str, etag: &str) -> String {
    let mut w = XmlWriter::new("CompleteMultipartUploadResult");
    w.elem("Location", location)
        .elem("Bucket", bucket)
        .elem("Key", key)
        .elem("ETag", &quote_etag(etag));
    w.finish()
}

/// A `ListPartsResult` page.
#[derive(Debug, Clone)]
pub struct ListPartsResult<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub upload_id: &'a str,
    pub owner: &'a Owner,
    pub part_number_marker: u32,
    pub next_part_number_marker: Option<u32>,
    pub max_parts: usize,
    pub truncated: bool,
    pub parts: &'a [PartInfo],
}

impl ListPartsResult<'_> {
    pub fn to_xml(&self) -> String {
        let mut w = XmlWriter::new("ListPartsResult");
        w.elem("Bucket", self.bucket)
            .elem("Key", self.key)
            .elem("UploadId", self.upload_id);
        self.owner.write(&mut w, "Initiator");
        self.owner.write(&mut w, "Owner");
        w.elem("StorageClass", "STANDARD")
            .elem("PartNumberMarker", &self.part_number_marker.to_string());
        if let Some(n) = self.next_part_number_marker {
            w.elem("NextPartNumberMarker", &n.to_string());
        }
        w.elem("MaxParts", &self.max_parts.to_string())
            .elem("IsTruncated", if self.truncated { "true" } else { "false" });
        for p in self.parts {
            w.open("Part")
                .elem("PartNumber", &p.part_number.to_string())
                .elem("LastModified", &iso8601(p.last_modified))
                .elem("ETag", &quote_etag(&p.etag))
                .elem("Size", &p.size.to_string())
                .close();
        }
        w.finish()
    }
}

/// A `ListMultipartUploadsResult` page.
#[derive(Debug, Clone)]
pub struct ListUploadsResult<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub key_marker: &'a str,
    pub upload_id_marker: &'a str,
    pub next_markers: Option<(&'a str, &'a str)>,
    pub max_uploads: usize,
    pub truncated: bool,
    pub url_encoded: bool,
    pub uploads: &'a [UploadInfo],
    pub common_prefixes: &'a [String],
    pub owner: &'a Owner,
}

impl ListUploadsResult<'_> {
    pub fn to_xml(&self) -> String {
        let enc = |s: &str| -> String {
            if self.url_encoded {
                url_encode_key(s)
            } else {
                s.to_owned()
            }
        };
        let mut w = XmlWriter::new("ListMultipartUploadsResult");
        w.elem("Bucket", self.bucket)
            .elem("KeyMarker", &enc(self.key_marker))
            .elem("UploadIdMarker", self.upload_id_marker);
        if let Some((k, u)) = self.next_markers {
            w.elem("NextKeyMarker", &enc(k))
                .elem("NextUploadIdMarker", u);
        }
        w.elem("Prefix", &enc(self.prefix));
        if let Some(d) = self.delimiter {
            w.elem("Delimiter", &enc(d));
        }
        if self.url_encoded {
            w.elem("EncodingType", "url");
        }
        w.elem("MaxUploads", &self.max_uploads.to_string())
            .elem("IsTruncated", if self.truncated { "true" } else { "false" });
        for u in self.uploads {
            w.open("Upload")
                .elem("Key", &enc(&u.key))
                .elem("UploadId", &u.upload_id);
            self.owner.write(&mut w, "Initiator");
            self.owner.write(&mut w, "Owner");
            w.elem("StorageClass", "STANDARD")
                .elem("Initiated", &iso8601(u.initiated))
                .close();
        }
        for p in self.common_prefixes {
            w.open("CommonPrefixes").elem("Prefix", &enc(p)).close();
        }
        w.finish()
    }
}

/// One failed key of a multi-object delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteError {
    pub key: String,
    pub code: String,
    pub message: String,
}

/// `DeleteResult`: the deleted keys (left out in quiet mode by the caller) and the failures.
pub fn delete_result(deleted: &[String], errors: &[DeleteError]) -> String {
    let mut w = XmlWriter::new("DeleteResult");
    for k in deleted {
        w.open("Deleted").elem("Key", k).close();
    }
    for e in errors {
        w.open("Error")
            .elem("Key", &e.key)
            .elem("Code", &e.code)
            .elem("Message", &e.message)
            .close();
    }
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Why a request body was refused (S3: `MalformedXML`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct XmlError(pub Cow<'static, str>);

fn malformed(msg: &'static str) -> XmlError {
    XmlError(Cow::Borrowed(msg))
}

/// A parsed element: local name, text content (concatenated, unescaped) and children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name.
    pub fn children_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Element> + 's {
        self.children.iter().filter(move |c| c.name == name)
    }
}

fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}

/// Parses a document into its root [`Element`]. Namespaces are dropped (local names only);
/// DTDs, unknown entities, mismatched tags and trailing content are errors.
pub fn parse_document(body: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| malformed("The XML is not UTF-8."))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let bad = || {
        malformed("The XML you provided was not well-formed or did not validate against our published schema.")
    };
    loop {
        let event = reader.read_event().map_err(|_| bad())?;
        match event {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(bad());
            }
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(malformed("The XML nests too deeply."));
                }
                let name = e.local_name().as_ref().to_owned();
                stack.push(Element {
                    name,
                    ..Element::default()
                });
            }
            Event::Empty(e) => {
                let el = Element {
                    name: e.local_name().as_ref().to_owned(),
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(bad)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(bad()),
                }
            }
            Event::CData(c) => {
                let content = c.xml10_content();
                stack.last_mut().ok_or_else(bad)?.text.push_str(&content);
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|_| bad())? {
                    Some(c) => c,
                    None => predefined_entity(&r).ok_or_else(bad)?,
                };
                stack.last_mut().ok_or_else(bad)?.text.push(c);
            }
            Event::DocType(_) => return Err(malformed("DTDs are not accepted.")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(bad());
    }
    root.ok_or_else(bad)
}

/// A parsed `Delete` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    pub quiet: bool,
    pub keys: Vec<String>,
}

/// Parses `<Delete><Quiet>true</Quiet><Object><Key>k</Key></Object>...</Delete>`.
pub fn parse_delete(body: &[u8]) -> Result<DeleteRequest, XmlError> {
    let root = parse_document(body)?;
    if root.name != "Delete" {
        return Err(malformed("The root element must be Delete."));
    }
    let quiet = match root.child("Quiet").map(|q| q.text.trim()) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err(malformed("Quiet must be true or false.")),
    };
    let mut keys = Vec::new();
    for o in root.children_named("Object") {
        let key = o
            .child("Key")
            .ok_or_else(|| malformed("Every Object needs a Key."))?;
        keys.push(key.text.clone());
        if keys.len() > MAX_DELETE_OBJECTS {
            return Err(malformed(
                "The request must contain no more than 1000 objects.",
            ));
        }
    }
    if keys.is_empty() {
        return Err(malformed("The request must contain at least one object."));
    }
    Ok(DeleteRequest { quiet, keys })
}

/// Parses `CompleteMultipartUpload` into `(part number, ETag)` pairs in document order.
pub fn parse_complete_multipart(body: &[u8]) -> Result<Vec<(u32, String)>, XmlError> {
    let root = parse_document(body)?;
    if root.name != "CompleteMultipartUpload" {
        return Err(malformed(
            "The root element must be CompleteMultipartUpload.",
        ));
    }
    let mut parts = Vec::new();
    for p in root.children_named("Part") {
        let number = p
            .child("PartNumber")
            .and_then(|n| n.text.trim().parse::<u32>().ok())
            .ok_or_else(|| malformed("Every Part needs a valid PartNumber."))?;
        let etag = p
            .child("ETag")
            .map(|e| e.text.trim().trim_matches('"').to_owned())
            .ok_or_else(|| malformed("Every Part needs an ETag."))?;
        parts.push((number, etag));
        if parts.len() > crate::backend::MAX_PART_NUMBER as usize {
            return Err(malformed("Too many parts."));
        }
    }
    if parts.is_empty() {
        return Err(malformed(
            "You must specify at least one part in CompleteMultipartUpload.",
        ));
    }
    Ok(parts)
}

/// One `Grant` of an `AccessControlPolicy`: the grantee's canonical ID (`None` for a group
/// `URI` or an `EmailAddress` grantee) and the permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclGrant {
    pub grantee_id: Option<String>,
    pub permission: String,
}

/// Parses the grants of an `AccessControlPolicy` (PutBucketAcl / PutObjectAcl body).
pub fn parse_acl_grants(body: &[u8]) -> Result<Vec<AclGrant>, XmlError> {
    let root = parse_document(body)?;
    if root.name != "AccessControlPolicy" {
        return Err(malformed("The root element must be AccessControlPolicy."));
    }
    let list = root
        .child("AccessControlList")
        .ok_or_else(|| malformed("An AccessControlPolicy needs an AccessControlList."))?;
    list.children_named("Grant")
        .map(|g| {
            let grantee = g
                .child("Grantee")
                .ok_or_else(|| malformed("Every Grant needs a Grantee."))?;
            let permission = g
                .child("Permission")
                .ok_or_else(|| malformed("Every Grant needs a Permission."))?;
            Ok(AclGrant {
                grantee_id: grantee.child("ID").map(|id| id.text.trim().to_owned()),
                permission: permission.text.trim().to_owned(),
            })
        })
        .collect()
}

/// Parses an optional `CreateBucketConfiguration`: its `LocationConstraint`, if any. An empty
/// (or whitespace-only) body is `Ok(None)`.
pub fn parse_create_bucket(body: &[u8]) -> Result<Option<String>, XmlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let root = parse_document(body)?;
    if root.name != "CreateBucketConfiguration" {
        return Err(malformed(
            "The root element must be CreateBucketConfiguration.",
        ));
    }
    Ok(root
        .child("LocationConstraint")
        .map(|l| l.text.trim().to_owned())
        .filter(|l| !l.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn owner() -> Owner {
        Owner {
            id: "abc".into(),
            display_name: "ember".into(),
        }
    }

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    #[test]
    fn escapes_text_and_control_characters() {
        assert_eq!(escape("plain"), Cow::Borrowed("plain"));
        assert_eq!(escape("a&b<c>\"d'\r"), "a&amp;b&lt;c&gt;&quot;d&apos;&#xD;");
        assert_eq!(escape("ünï 文件\n"), "ünï 文件\n");
    }

    #[test]
    fn dates_have_milliseconds() {
        assert_eq!(iso8601(at(1_369_353_600, 0)), "2013-05-24T00:00:00.000Z");
        assert_eq!(iso8601(at(1_369_353_601, 42)), "2013-05-24T00:00:01.042Z");
    }

    #[test]
    fn error_document_shape() {
        let doc = ErrorDocument {
            code: "NoSuchKey",
            message: "The specified key does not exist.",
            extra: &[("Key", "a<b".to_owned())],
            resource: "/bkt/a<b",
            request_id: "REQ1",
        }
        .to_xml();
        assert_eq!(
            doc,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>a&lt;b</Key><Resource>/bkt/a&lt;b</Resource><RequestId>REQ1</RequestId><HostId>REQ1</HostId></Error>"
        );
    }

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 3,
            etag: "900150983cd24fb0d6963f7d28e17f72".into(),
            last_modified: at(1_369_353_600, 0),
            headers: Default::default(),
            user_meta: BTreeMap::new(),
        }
    }

    #[test]
    fn list_v2_document() {
        let objects = [meta("a b+c/ü&")];
        let prefixes = ["dir/".to_owned()];
        let o = owner();
        let doc = ListObjectsResult {
            bucket: "bkt",
            prefix: "",
            delimiter: Some("/"),
            max_keys: 2,
            url_encoded: true,
            truncated: true,
            objects: &objects,
            common_prefixes: &prefixes,
            owner: &o,
            version: ListVersion::V2 {
                continuation_token: None,
                next_continuation_token: Some("tok".into()),
                start_after: None,
                fetch_owner: false,
            },
        }
        .to_xml();
        assert!(doc.starts_with(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bkt</Name><Prefix></Prefix><NextContinuationToken>tok</NextContinuationToken><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><Delimiter>/</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        ), "{doc}");
        assert!(doc.contains(
            "<Contents><Key>a%20b%2Bc/%C3%BC%26</Key><LastModified>2013-05-24T00:00:00.000Z</LastModified><ETag>&quot;900150983cd24fb0d6963f7d28e17f72&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>"
        ), "{doc}");
        assert!(doc.ends_with(
            "<CommonPrefixes><Prefix>dir/</Prefix></CommonPrefixes></ListBucketResult>"
        ));
        // The document parses back.
        let root = parse_document(doc.as_bytes()).unwrap();
        assert_eq!(root.name, "ListBucketResult");
        assert_eq!(
            root.child("Contents").unwrap().child("ETag").unwrap().text,
            "\"900150983cd24fb0d6963f7d28e17f72\""
        );
    }

    #[test]
    fn list_v1_document_has_owner_and_markers() {
        let objects = [meta("k")];
        let o = owner();
        let doc = ListObjectsResult {
            bucket: "bkt",
            prefix: "p",
            delimiter: None,
            max_keys: 1000,
            url_encoded: false,
            truncated: false,
            objects: &objects,
            common_prefixes: &[],
            owner: &o,
            version: ListVersion::V1 {
                marker: "m".into(),
                next_marker: None,
            },
        }
        .to_xml();
        assert!(doc.contains("<Prefix>p</Prefix><Marker>m</Marker><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"), "{doc}");
        assert!(doc.contains("<Owner><ID>abc</ID><DisplayName>ember</DisplayName></Owner>"));
        assert!(!doc.contains("KeyCount"));
    }

    #[test]
    fn small_documents() {
        assert!(location_constraint("us-east-1").ends_with("<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></LocationConstraint>"));
        assert!(location_constraint("eu-west-1").ends_with(">eu-west-1</LocationConstraint>"));
        assert!(versioning_configuration().ends_with("<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></VersioningConfiguration>"));
        let acl = owner_full_control_acl(&owner());
        assert!(acl.contains("xsi:type=\"CanonicalUser\""));
        assert!(acl.contains("<Permission>FULL_CONTROL</Permission></Grant></AccessControlList></AccessControlPolicy>"));
        let d = delete_result(
            &["a&b".into()],
            &[DeleteError {
                key: "c".into(),
                code: "AccessDenied".into(),
                message: "Access Denied".into(),
            }],
        );
        assert!(d.contains("<Deleted><Key>a&amp;b</Key></Deleted><Error><Key>c</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"));
        assert!(complete_multipart("/b/k", "b", "k", "abc-2")
            .contains("<ETag>&quot;abc-2&quot;</ETag>"));
        assert!(copy_result("CopyObjectResult", "\"e\"", at(0, 5)).contains(
            "<LastModified>1970-01-01T00:00:00.005Z</LastModified><ETag>&quot;e&quot;</ETag>"
        ));
    }

    #[test]
    fn parses_delete() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Quiet>true</Quiet>
  <Object><Key>a &amp; b</Key></Object>
  <Object><Key> spaced </Key><VersionId>null</VersionId></Object>
  <Object><Key>&#x6587;&#20214;<![CDATA[<x>]]></Key></Object>
</Delete>"#;
        let d = parse_delete(body).unwrap();
        assert!(d.quiet);
        assert_eq!(d.keys, vec!["a & b", " spaced ", "文件<x>"]);
        assert!(
            !parse_delete(b"<Delete><Object><Key>k</Key></Object></Delete>")
                .unwrap()
                .quiet
        );
    }

    #[test]
    fn refuses_malformed_xml() {
        for bad in [
            &b""[..],
            b"<Delete>",
            b"<Delete></Other>",
            b"<Delete><Object><Key>k</Key></Object></Delete><Delete/>",
            b"<Delete><Object/></Delete>",
            b"<Delete></Delete>",
            b"<Delete><Quiet>yes</Quiet><Object><Key>k</Key></Object></Delete>",
            b"<!DOCTYPE x [<!ENTITY e \"boom\">]><Delete><Object><Key>&e;</Key></Object></Delete>",
            b"<Other/>",
            b"\xff\xfe",
            b"text<Delete/>",
        ] {
            assert!(
                parse_delete(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(parse_document(deep.as_bytes()).is_err());
        let many: String = std::iter::once("<Delete>".to_owned())
            .chain((0..1001).map(|i| format!("<Object><Key>{i}</Key></Object>")))
            .chain(std::iter::once("</Delete>".to_owned()))
            .collect();
        assert!(parse_delete(many.as_bytes()).is_err());
    }

    #[test]
    fn parses_acl_grants() {
        let ours = owner_full_control_acl(&owner());
        assert_eq!(
            parse_acl_grants(ours.as_bytes()).unwrap(),
            [AclGrant {
                grantee_id: Some("abc".into()),
                permission: "FULL_CONTROL".into()
            }]
        );
        let group = b"<AccessControlPolicy><Owner><ID>abc</ID></Owner><AccessControlList>\
            <Grant><Grantee><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI>\
            </Grantee><Permission>READ</Permission></Grant></AccessControlList>\
            </AccessControlPolicy>";
        assert_eq!(
            parse_acl_grants(group).unwrap(),
            [AclGrant {
                grantee_id: None,
                permission: "READ".into()
            }]
        );
        for bad in [
            &b"<Delete/>"[..],
            b"<AccessControlPolicy/>",
            b"<AccessControlPolicy><AccessControlList><Grant><Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>",
            b"<AccessControlPolicy><AccessControlList><Grant><Grantee><ID>a</ID></Grantee></Grant></AccessControlList></AccessControlPolicy>",
        ] {
            assert!(parse_acl_grants(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parses_complete_multipart_and_create_bucket() {
        let body = br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><ETag>"aaa"</ETag><PartNumber>1</PartNumber><ChecksumCRC32>x</ChecksumCRC32></Part>
  <Part><PartNumber> 2 </PartNumber><ETag>&quot;bbb&quot;</ETag></Part>
</CompleteMultipartUpload>"#;
        assert_eq!(
            parse_complete_multipart(body).unwrap(),
            vec![(1, "aaa".to_owned()), (2, "bbb".to_owned())]
        );
        assert!(parse_complete_multipart(b"<CompleteMultipartUpload/>").is_err());
        assert!(parse_complete_multipart(
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>"
        )
        .is_err());
        assert_eq!(parse_create_bucket(b"").unwrap(), None);
        assert_eq!(parse_create_bucket(b"  \n").unwrap(), None);
        assert_eq!(
            parse_create_bucket(
                b"<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"
            )
            .unwrap(),
            Some("eu-west-1".to_owned())
        );
        assert_eq!(
            parse_create_bucket(b"<CreateBucketConfiguration/>").unwrap(),
            None
        );
        assert!(parse_create_bucket(b"<Nope/>").is_err());
    }
}
