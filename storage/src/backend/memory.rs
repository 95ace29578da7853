//! An in-memory [`Backend`]: the reference model of the semantics every backend shares
//! (listing order and grouping, multipart rules, conditional create), small enough to be
//! obviously right. Used by front-end tests and as the oracle the `fs` backend is compared
//! against. Not for production: objects are held in memory.

use crate::s3::sigv4::hex_encode as hex;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};

use super::{
    validate_bucket, validate_key, Backend, BucketInfo, ByteStream, CopyMetadata, ListPage,
    ListQuery, ObjectMeta, PartInfo, PutOptions, Result, StorageError, UploadInfo, MAX_PART_NUMBER,
    MIN_PART_SIZE,
};

#[derive(Clone)]
struct Object {
    meta: ObjectMeta,
    data: Bytes,
}

struct Upload {
    key: String,
    opts: PutOptions,
    initiated: SystemTime,
    parts: BTreeMap<u32, (PartInfo, Bytes)>,
}

struct Bucket {
    created: SystemTime,
    objects: BTreeMap<String, Object>,
    uploads: BTreeMap<String, Upload>,
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryBackend {
    buckets: Mutex<BTreeMap<String, Bucket>>,
    next_upload: Mutex<u64>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn with_bucket<T>(&self, bucket: &str, f: impl FnOnce(&mut Bucket) -> Result<T>) -> Result<T> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.get_mut(bucket).ok_or(StorageError::NoSuchBucket)?;
        f(b)
    }
}

/// Reads a body to the end, enforcing `max_size`.
pub(crate) async fn collect(mut body: ByteStream, max_size: Option<u64>) -> Result<Bytes> {
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StorageError::BodyError)?;
        out.extend_from_slice(&chunk);
        if let Some(limit) = max_size {
            if out.len() as u64 > limit {
                return Err(StorageError::EntityTooLarge { limit });
            }
        }
    }
    Ok(out.freeze())
}

fn md5_hex(data: &[u8]) -> (String, [u8; 16]) {
    let d: [u8; 16] = Md5::digest(data).into();
    (hex(&d), d)
}

fn once(data: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// The common listing logic over keys in order: objects and common prefixes after
/// `query.after`, at most `max_keys` of them together.
pub fn list_sorted<'a>(
    keys: impl Iterator<Item = (&'a String, &'a ObjectMeta)>,
    query: &ListQuery,
) -> ListPage {
    let mut page = ListPage::default();
    let max = query.max_keys;
    let mut count = 0;
    for (key, meta) in keys {
        if !key.starts_with(&query.prefix) {
            continue;
        }
        if let Some(after) = &query.after {
            if key.as_str() <= after.as_str() {
                continue;
            }
        }
        let entry = match &query.delimiter {
            Some(d) if !d.is_empty() => key[query.prefix.len()..]
                .find(d.as_str())
                .map(|i| key[..query.prefix.len() + i + d.len()].to_owned()),
            _ => None,
        };
        if let Some(cp) = &entry {
            // Keys inside a prefix already returned, or at/before the marker, are skipped.
            if page.common_prefixes.last() == Some(cp)
                || query.after.as_deref().is_some_and(|a| cp.as_str() <= a)
            {
                continue;
            }
        }
        if count == max {
            page.truncated = true;
            break;
        }
        count += 1;
        match entry {
            Some(cp) => {
                page.next_after = Some(cp.clone());
                page.common_prefixes.push(cp);
            }
            None => {
                page.next_after = Some(key.clone());
                page.objects.push(meta.clone());
            }
        }
    }
    if !page.truncated {
        page.next_after = None;
    }
    page
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn list_buckets(&self) -> Result<Vec<BucketInfo>> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(buckets
            .iter()
            .map(|(name, b)| BucketInfo {
                name: name.clone(),
                created: b.created,
            })
            .collect())
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        validate_bucket(bucket)?;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.contains_key(bucket) {
            return Err(StorageError::BucketAlreadyExists);
        }
        buckets.insert(
            bucket.to_owned(),
            Bucket {
                created: SystemTime::now(),
                objects: BTreeMap::new(),
                uploads: BTreeMap::new(),
            },
        );
        Ok(())
    }

    async fn head_bucket(&self, bucket: &str) -> Result<BucketInfo> {
        self.with_bucket(bucket, |b| {
            Ok(BucketInfo {
                name: bucket.to_owned(),
                created: b.created,
            })
        })
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<()> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.get(bucket).ok_or(StorageError::NoSuchBucket)?;
        if !b.objects.is_empty() || !b.uploads.is_empty() {
            return Err(StorageError::BucketNotEmpty);
        }
        buckets.remove(bucket);
        Ok(())
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_key(key)?;
        self.head_bucket(bucket).await?;
        let data = collect(body, opts.max_size).await?;
        let (etag, digest) = md5_hex(&data);
        if opts.expected_md5.is_some_and(|m| m != digest) {
            return Err(StorageError::BadDigest);
        }
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            etag,
            last_modified: SystemTime::now(),
            headers: opts.headers,
            user_meta: opts.user_meta,
        };
        self.with_bucket(bucket, |b| {
            if opts.if_none_match && b.objects.contains_key(key) {
                return Err(StorageError::AlreadyExists);
            }
            b.objects.insert(
                key.to_owned(),
                Object {
                    meta: meta.clone(),
                    data,
                },
            );
            Ok(meta)
        })
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectMeta, ByteStream)> {
        let o = self.with_bucket(bucket, |b| {
            b.objects.get(key).cloned().ok_or(StorageError::NoSuchKey)
        })?;
        let data = match range {
            Some(r) => {
                let end = r.end.min(o.data.len() as u64) as usize;
                let start = (r.start as usize).min(end);
                o.data.slice(start..end)
            }
            None => o.data,
        };
        Ok((o.meta, once(data)))
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectMeta> {
        self.with_bucket(bucket, |b| {
            b.objects
                .get(key)
                .map(|o| o.meta.clone())
                .ok_or(StorageError::NoSuchKey)
        })
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        self.with_bucket(bucket, |b| {
            b.objects.remove(key);
            Ok(())
        })
    }

    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        metadata: CopyMetadata,
    ) -> Result<ObjectMeta> {
        validate_key(dst_key)?;
        let src = self.with_bucket(src_bucket, |b| {
            b.objects
                .get(src_key)
                .cloned()
                .ok_or(StorageError::NoSuchKey)
        })?;
        let (headers, user_meta) = match metadata {
            CopyMetadata::Copy => (src.meta.headers.clone(), src.meta.user_meta.clone()),
            CopyMetadata::Replace(o) => (o.headers.clone(), o.user_meta.clone()),
        };
        let meta = ObjectMeta {
            key: dst_key.to_owned(),
            last_modified: SystemTime::now(),
            headers,
            user_meta,
            ..src.meta
        };
        self.with_bucket(dst_bucket, |b| {
            b.objects.insert(
                dst_key.to_owned(),
                Object {
                    meta: meta.clone(),
                    data: src.data,
                },
            );
            Ok(meta)
        })
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> Result<ListPage> {
        self.with_bucket(bucket, |b| {
            Ok(list_sorted(
                b.objects.iter().map(|(k, o)| (k, &o.meta)),
                query,
            ))
        })
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: PutOptions) -> Result<String> {
        validate_key(key)?;
        let id = {
            let mut n = self.next_upload.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            format!("mem-{n}")
        };
        self.with_bucket(bucket, |b| {
            b.uploads.insert(
                id.clone(),
                Upload {
                    key: key.to_owned(),
                    opts,
                    initiated: SystemTime::now(),
                    parts: BTreeMap::new(),
                },
            );
            Ok(id)
        })
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        expected_md5: Option<[u8; 16]>,
    ) -> Result<PartInfo> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(StorageError::InvalidPart);
        }
        let max = self.with_bucket(bucket, |b| match b.uploads.get(upload_id) {
            Some(u) if u.key == key => Ok(u.opts.max_size),
            _ => Err(StorageError::NoSuchUpload),
        })?;
        let data = collect(body, max).await?;
        let (etag, digest) = md5_hex(&data);
        if expected_md5.is_some_and(|m| m != digest) {
            return Err(StorageError::BadDigest);
        }
        let info = PartInfo {
            part_number,
            etag,
            size: data.len() as u64,
            last_modified: SystemTime::now(),
        };
        self.with_bucket(bucket, |b| {
            let u = b
                .uploads
                .get_mut(upload_id)
                .ok_or(StorageError::NoSuchUpload)?;
            u.parts.insert(part_number, (info.clone(), data));
            Ok(info)
        })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta> {
        self.with_bucket(bucket, |b| {
            let u = match b.uploads.get(upload_id) {
                Some(u) if u.key == key => u,
                _ => return Err(StorageError::NoSuchUpload),
            };
            if parts.is_empty() {
                return Err(StorageError::InvalidPart);
            }
            if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(StorageError::InvalidPartOrder);
            }
            let mut data = BytesMut::new();
            let mut md5s = Vec::with_capacity(parts.len() * 16);
            for (i, (n, etag)) in parts.iter().enumerate() {
                let (info, bytes) = u.parts.get(n).ok_or(StorageError::InvalidPart)?;
                if info.etag != etag.trim_matches('"') {
                    return Err(StorageError::InvalidPart);
                }
                if i + 1 < parts.len() && info.size < MIN_PART_SIZE {
                    return Err(StorageError::EntityTooSmall);
                }
                data.extend_from_slice(bytes);
                md5s.extend_from_slice(&Md5::digest(bytes));
            }
            if let Some(limit) = u.opts.max_size {
                if data.len() as u64 > limit {
                    return Err(StorageError::EntityTooLarge { limit });
                }
            }
            if u.opts.if_none_match && b.objects.contains_key(key) {
                return Err(StorageError::AlreadyExists);
            }
            let meta = ObjectMeta {
                key: key.to_owned(),
                size: data.len() as u64,
                etag: format!("{}-{}", hex(&Md5::digest(&md5s)), parts.len()),
                last_modified: SystemTime::now(),
                headers: u.opts.headers.clone(),
                user_meta: u.opts.user_meta.clone(),
            };
            b.uploads.remove(upload_id);
            b.objects.insert(
                key.to_owned(),
                Object {
                    meta: meta.clone(),
                    data: data.freeze(),
                },
            );
            Ok(meta)
        })
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        self.with_bucket(bucket, |b| match b.uploads.get(upload_id) {
            Some(u) if u.key == key => {
                b.uploads.remove(upload_id);
                Ok(())
            }
            _ => Err(StorageError::NoSuchUpload),
        })
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        self.with_bucket(bucket, |b| match b.uploads.get(upload_id) {
            Some(u) if u.key == key => Ok(u.parts.values().map(|(i, _)| i.clone()).collect()),
            _ => Err(StorageError::NoSuchUpload),
        })
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<UploadInfo>> {
        self.with_bucket(bucket, |b| {
            let mut v: Vec<UploadInfo> = b
                .uploads
                .iter()
                .filter(|(_, u)| u.key.starts_with(prefix))
                .map(|(id, u)| UploadInfo {
                    key: u.key.clone(),
                    upload_id: id.clone(),
                    initiated: u.initiated,
                })
                .collect();
            v.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
            Ok(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &'static [u8]) -> ByteStream {
        once(Bytes::from_static(s))
    }

    async fn store(keys: &[&str]) -> MemoryBackend {
        let m = MemoryBackend::new();
        m.create_bucket("bkt").await.unwrap();
        for k in keys {
            m.put_object("bkt", k, body(b"x"), PutOptions::default())
                .await
                .unwrap();
        }
        m
    }

    fn q(prefix: &str, delim: Option<&str>, after: Option<&str>, max: usize) -> ListQuery {
        ListQuery {
            prefix: prefix.into(),
            delimiter: delim.map(Into::into),
            after: after.map(Into::into),
            max_keys: max,
            metadata: true,
        }
    }

    #[tokio::test]
    async fn listing_groups_and_pages() {
        let m = store(&["a/1", "a/2", "b", "c/x/1", "c/y", "d"]).await;
        let p = m
            .list_objects("bkt", &q("", Some("/"), None, 1000))
            .await
            .unwrap();
        let keys: Vec<_> = p.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["b", "d"]);
        assert_eq!(p.common_prefixes, ["a/", "c/"]);
        assert!(!p.truncated);

        // Pages of two: a/ , b | c/ , d.
        let p1 = m
            .list_objects("bkt", &q("", Some("/"), None, 2))
            .await
            .unwrap();
        assert!(p1.truncated);
        assert_eq!(p1.next_after.as_deref(), Some("b"));
        let p2 = m
            .list_objects("bkt", &q("", Some("/"), p1.next_after.as_deref(), 2))
            .await
            .unwrap();
        assert_eq!(p2.common_prefixes, ["c/"]);
        assert_eq!(p2.objects.len(), 1);
        assert!(!p2.truncated);

        // A marker inside a common prefix does not repeat the prefix.
        let p = m
            .list_objects("bkt", &q("", Some("/"), Some("a/1"), 10))
            .await
            .unwrap();
        assert_eq!(p.common_prefixes, ["c/"]);
        let p = m
            .list_objects("bkt", &q("c/", Some("/"), None, 10))
            .await
            .unwrap();
        assert_eq!(p.common_prefixes, ["c/x/"]);
        assert_eq!(p.objects[0].key, "c/y");
    }

    #[tokio::test]
    async fn conditional_create_and_bucket_rules() {
        let m = store(&["k"]).await;
        let opts = PutOptions {
            if_none_match: true,
            ..PutOptions::default()
        };
        assert!(matches!(
            m.put_object("bkt", "k", body(b"y"), opts).await,
            Err(StorageError::AlreadyExists)
        ));
        assert!(matches!(
            m.delete_bucket("bkt").await,
            Err(StorageError::BucketNotEmpty)
        ));
        m.delete_object("bkt", "k").await.unwrap();
        m.delete_object("bkt", "k").await.unwrap();
        m.delete_bucket("bkt").await.unwrap();
        assert!(matches!(
            m.head_object("bkt", "k").await,
            Err(StorageError::NoSuchBucket)
        ));
    }

    #[tokio::test]
    async fn multipart_etag_and_rules() {
        let m = store(&[]).await;
        let id = m
            .create_multipart("bkt", "big", PutOptions::default())
            .await
            .unwrap();
        let big = Bytes::from(vec![7u8; MIN_PART_SIZE as usize]);
        let p1 = m
            .upload_part("bkt", "big", &id, 1, once(big.clone()), None)
            .await
            .unwrap();
        let p2 = m
            .upload_part("bkt", "big", &id, 2, body(b"tail"), None)
            .await
            .unwrap();
        assert!(matches!(
            m.complete_multipart(
                "bkt",
                "big",
                &id,
                &[(2, p2.etag.clone()), (1, p1.etag.clone())]
            )
            .await,
            Err(StorageError::InvalidPartOrder)
        ));
        let meta = m
            .complete_multipart("bkt", "big", &id, &[(1, p1.etag.clone()), (2, p2.etag)])
            .await
            .unwrap();
        assert!(meta.etag.ends_with("-2"));
        assert_eq!(meta.size, MIN_PART_SIZE + 4);
        assert!(matches!(
            m.list_parts("bkt", "big", &id).await,
            Err(StorageError::NoSuchUpload)
        ));

        // A small part before the last is refused.
        let id = m
            .create_multipart("bkt", "small", PutOptions::default())
            .await
            .unwrap();
        let a = m
            .upload_part("bkt", "small", &id, 1, body(b"a"), None)
            .await
            .unwrap();
        let b = m
            .upload_part("bkt", "small", &id, 2, body(b"b"), None)
            .await
            .unwrap();
        assert!(matches!(
            m.complete_multipart("bkt", "small", &id, &[(1, a.etag), (2, b.etag)])
                .await,
            Err(StorageError::EntityTooSmall)
        ));
    }

    #[tokio::test]
    async fn size_limit_and_digest() {
        let m = store(&[]).await;
        let opts = PutOptions {
            max_size: Some(3),
            ..PutOptions::default()
        };
        assert!(matches!(
            m.put_object("bkt", "k", body(b"four"), opts).await,
            Err(StorageError::EntityTooLarge { limit: 3 })
        ));
        let opts = PutOptions {
            expected_md5: Some([0; 16]),
            ..PutOptions::default()
        };
        assert!(matches!(
            m.put_object("bkt", "k", body(b"x"), opts).await,
            Err(StorageError::BadDigest)
        ));
        assert!(matches!(
            m.head_object("bkt", "k").await,
            Err(StorageError::NoSuchKey)
        ));
    }
}
