//! Images: a namespace's own (import an archive, list, get, delete) and the public ones
//! (publish, list, delete: the platform admin's).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulkhead_api::{Image, Page, SetWarmPool, WarmPool};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;
use tokio::io::AsyncReadExt;

use crate::{namespace_path, page, seg, Client, Error, Result};

/// Bytes read from the archive per chunk of an upload.
const CHUNK: usize = 256 * 1024;

/// `/v1/namespaces/{ns}/images{rest}`, or with `ns` `None` the public `/v1/images{rest}`.
fn images_path(ns: Option<&str>, rest: &str) -> String {
    match ns {
        Some(ns) => namespace_path(ns, &format!("/images{rest}")),
        None => format!("/v1/images{rest}"),
    }
}

impl Client {
    /// Imports the archive at `archive` (an OCI image layout or a `docker save` tar, plain,
    /// gzip or zstd) as image `name` of namespace `ns`, or with `ns` `None` publishes it as a
    /// public image (the platform admin). The file is streamed, never read whole; `sent` counts
    /// the bytes sent so far, for a progress display.
    pub async fn import_image(
        &self,
        ns: Option<&str>,
        name: &str,
        archive: &Path,
        sent: Arc<AtomicU64>,
    ) -> Result<Image> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|source| Error::Read { path: archive.display().to_string(), source })?;
        let len = file.metadata().await.map(|m| m.len()).ok();
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(Some(file), move |file| {
            let sent = sent.clone();
            async move {
                let mut file = file?;
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                        Some((Ok::<_, std::io::Error>(buf), Some(file)))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        }));
        let mut builder = self
            .request(Method::PUT, &images_path(ns, &format!("/{}/archive", seg(name))))
            .header(CONTENT_TYPE, "application/x-tar")
            .body(body);
        if let Some(len) = len {
            builder = builder.header(CONTENT_LENGTH, len);
        }
        self.send(builder).await
    }

    /// Pulls `source` (`registry/repo:tag` or `registry/repo@sha256:<hex>`) from its OCI
    /// registry as image `name` of namespace `ns`, with the registry credentials in the
    /// namespace's secret `secret` (none: anonymously); or with `ns` `None` as a public image
    /// (the platform admin; anonymous only). One request, answered once the image is imported.
    pub async fn pull_image(&self, ns: Option<&str>, name: &str, source: &str, secret: Option<&str>) -> Result<Image> {
        let mut body = serde_json::json!({ "name": name, "source": source });
        if let Some(secret) = secret {
            body["credentials"] = serde_json::json!({ "secret": secret });
        }
        self.send(self.request(Method::POST, &images_path(ns, "")).json(&body)).await
    }

    /// Builds image `name` of namespace `ns` by running `run` (argvs, in order) in a sandbox of
    /// image `from` and saving its root: `POST .../images` with `from` and `run`.
    pub async fn build_image(&self, ns: &str, name: &str, from: &str, run: &[Vec<String>]) -> Result<Image> {
        let body = bulkhead_api::BuildImage { name: name.to_owned(), from: from.to_owned(), run: run.to_vec() };
        self.send(self.request(Method::POST, &images_path(Some(ns), "")).json(&body)).await
    }

    /// One page of the images namespace `ns` sees (its own and the public ones), or with `ns`
    /// `None` of the public images (the platform admin).
    pub async fn list_images(&self, ns: Option<&str>, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Image>> {
        self.send(self.request(Method::GET, &images_path(ns, "")).query(&page(limit, cursor))).await
    }

    /// Image `name_or_id` as namespace `ns` sees it.
    pub async fn get_image(&self, ns: &str, name_or_id: &str) -> Result<Image> {
        self.send(self.request(Method::GET, &images_path(Some(ns), &format!("/{}", seg(name_or_id))))).await
    }

    /// Deletes image `name_or_id` of namespace `ns`, or with `ns` `None` a public image.
    pub async fn delete_image(&self, ns: Option<&str>, name_or_id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &images_path(ns, &format!("/{}", seg(name_or_id))))).await
    }

    /// The warm pools of namespace `ns` (every one: a namespace has at most one per image).
    pub async fn list_pools(&self, ns: &str) -> Result<Page<WarmPool>> {
        self.send(self.request(Method::GET, &namespace_path(ns, "/pools"))).await
    }

    /// Sets the size of namespace `ns`'s warm pool of image `name_or_id` (0 removes it): the
    /// namespace's admin for its own images, the platform admin for a public one.
    pub async fn set_pool(&self, ns: &str, name_or_id: &str, size: u64) -> Result<WarmPool> {
        let path = namespace_path(ns, &format!("/pools/{}", seg(name_or_id)));
        self.send(self.request(Method::PUT, &path).json(&SetWarmPool { size })).await
    }

    /// Removes namespace `ns`'s warm pool of image `name_or_id` (its ready sandboxes go).
    pub async fn delete_pool(&self, ns: &str, name_or_id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &namespace_path(ns, &format!("/pools/{}", seg(name_or_id))))).await
    }
}
