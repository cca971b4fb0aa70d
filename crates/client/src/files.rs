//! Files inside a sandbox, streamed both ways: a download is written out as it arrives and an
//! upload is read as it is sent, so no file is ever held whole in memory. Also directory
//! listings, as a user of the sandbox's image.

use std::io::{Read, Write};

use bulkhead_api::{FileEntry, Page, SandboxFileParams};
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;

use crate::{namespace_path, seg, Client, Error, Result};

/// Bytes read from the local source per chunk of an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

fn files_path(ns: &str, id: &str) -> String {
    namespace_path(ns, &format!("/sandboxes/{}/files", seg(id)))
}

/// How a file operation inside a sandbox is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// Act as this user of the image (a name, uid or `uid:gid`); its root when `None`.
    pub user: Option<String>,
    /// Writes only: permission bits in octal (`"0755"`); without it an existing file keeps its
    /// mode and a new one gets 0644.
    pub mode: Option<String>,
}

impl Client {
    /// Streams the file at `path` inside a sandbox into `out` as it arrives; returns the bytes
    /// written. A download cut short is an error (what was written stays in `out`).
    pub async fn download_file(
        &self,
        ns: &str,
        id: &str,
        path: &str,
        options: &FileOptions,
        out: &mut (dyn Write + Send),
    ) -> Result<u64> {
        let query = SandboxFileParams { path: path.to_owned(), user: options.user.clone(), ..Default::default() };
        let mut answer = self.send_raw(self.request(Method::GET, &files_path(ns, id)).query(&query)).await?;
        let mut total = 0u64;
        while let Some(chunk) = answer.chunk().await? {
            out.write_all(&chunk).map_err(|source| Error::WriteFile { source })?;
            total += chunk.len() as u64;
        }
        Ok(total)
    }

    /// Writes the file at `path` inside a sandbox from `source`, read in chunks as they are
    /// sent (never whole); replaced atomically, parent directories created.
    pub async fn upload_file(
        &self,
        ns: &str,
        id: &str,
        path: &str,
        options: &FileOptions,
        source: Box<dyn Read + Send>,
    ) -> Result<()> {
        let query = SandboxFileParams {
            path: path.to_owned(),
            user: options.user.clone(),
            mode: options.mode.clone(),
            ..Default::default()
        };
        let builder = self
            .request(Method::PUT, &files_path(ns, id))
            .query(&query)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(crate::lines::reader_body(source, UPLOAD_CHUNK));
        self.send_raw(builder).await.map(|_| ())
    }

    /// A page of the directory at `path` inside a sandbox (sorted by name; `cursor` from the
    /// previous page's `next_cursor`).
    pub async fn list_files(
        &self,
        ns: &str,
        id: &str,
        path: &str,
        options: &FileOptions,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<FileEntry>> {
        let query = SandboxFileParams {
            path: path.to_owned(),
            user: options.user.clone(),
            list: Some(true),
            limit,
            cursor: cursor.map(str::to_owned),
            ..Default::default()
        };
        self.send(self.request(Method::GET, &files_path(ns, id)).query(&query)).await
    }
}
