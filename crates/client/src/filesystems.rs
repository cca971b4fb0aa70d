//! Filesystems, their files and whole-tree archives, and the projects they belong to.

use bulkhead_api::{
    ArchiveResult, CreateFilesystem, CreateProject, FileEntry, Filesystem, FilesystemDeleteParams,
    FilesystemFileParams, Page, Project, ResizeFilesystem,
};
use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use reqwest::Method;

use crate::{namespace_path, seg, Client, Error, Result};

/// `/v1/namespaces/{ns}/filesystems/{id}` and `rest`.
fn filesystem_path(ns: &str, id: &str, rest: &str) -> String {
    namespace_path(ns, &format!("/filesystems/{}{rest}", seg(id)))
}

/// The query of one file of a filesystem.
fn file(path: &str) -> FilesystemFileParams {
    FilesystemFileParams { path: path.to_owned(), ..Default::default() }
}

/// A file of a filesystem and the ETag of its content.
#[derive(Debug, Clone)]
pub struct FsFile {
    /// The file's bytes.
    pub data: Vec<u8>,
    /// The ETag the server sent, quotes included; `None` when it sent none.
    pub etag: Option<String>,
}

impl Client {
    /// Creates a filesystem of `size_bytes`, counted against the namespace's disk quota.
    pub async fn create_filesystem(&self, ns: &str, req: &CreateFilesystem) -> Result<Filesystem> {
        self.create_in(ns, "/filesystems", req).await
    }

    /// A page of the filesystems the token may see.
    pub async fn list_filesystems(
        &self,
        ns: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Filesystem>> {
        self.list_in(ns, "/filesystems", limit, cursor).await
    }

    /// A filesystem with its use and the sandboxes that mount it.
    pub async fn get_filesystem(&self, ns: &str, id: &str) -> Result<Filesystem> {
        self.send(self.request(Method::GET, &filesystem_path(ns, id, ""))).await
    }

    /// Grows a filesystem to `size_bytes`; the server refuses to shrink one.
    pub async fn resize_filesystem(&self, ns: &str, id: &str, req: &ResizeFilesystem) -> Result<Filesystem> {
        self.send(self.request(Method::PATCH, &filesystem_path(ns, id, "")).json(req)).await
    }

    /// Deletes a filesystem and its data; with `force`, the sandboxes that mount it are deleted
    /// first instead of the server refusing with 409.
    pub async fn delete_filesystem(&self, ns: &str, id: &str, force: bool) -> Result<()> {
        let query = FilesystemDeleteParams { force: force.then_some(true) };
        self.send(self.request(Method::DELETE, &filesystem_path(ns, id, "")).query(&query)).await
    }

    /// Streams the whole filesystem as a plain tar archive into `writer`, calling `progress`
    /// with the bytes received so far after every chunk; returns the archive's size. A writer
    /// that refuses a chunk is an [`Error::Write`].
    pub async fn download_archive(
        &self,
        ns: &str,
        id: &str,
        writer: &mut impl std::io::Write,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let builder = self.request(Method::GET, &filesystem_path(ns, id, "/archive"));
        let mut answer = self.send_raw(builder).await?;
        let mut received = 0u64;
        while let Some(chunk) = answer.chunk().await? {
            writer.write_all(&chunk).map_err(|source| Error::Write { source })?;
            received += chunk.len() as u64;
            progress(received);
        }
        writer.flush().map_err(|source| Error::Write { source })?;
        Ok(received)
    }

    /// Replaces the whole content of a filesystem with a tar archive (plain, gzip or zstd).
    pub async fn upload_archive(&self, ns: &str, id: &str, body: Vec<u8>) -> Result<ArchiveResult> {
        let builder = self
            .request(Method::PUT, &filesystem_path(ns, id, "/archive"))
            .header(CONTENT_TYPE, "application/x-tar")
            .body(body);
        self.send(builder).await
    }

    /// A file of a filesystem (`path` relative to its root) and its ETag.
    pub async fn fs_read_file(&self, ns: &str, id: &str, path: &str) -> Result<FsFile> {
        let builder = self.request(Method::GET, &filesystem_path(ns, id, "/files")).query(&file(path));
        let answer = self.send_raw(builder).await?;
        let etag = answer.header(ETAG).map(str::to_owned);
        let data = answer.bounded().await?;
        Ok(FsFile { data, etag })
    }

    /// The entries of a directory of a filesystem (`""` for its root), every page of them.
    pub async fn fs_list(&self, ns: &str, id: &str, path: &str) -> Result<Vec<FileEntry>> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let query = FilesystemFileParams { list: Some(true), cursor: cursor.take(), ..file(path) };
            let page: Page<FileEntry> =
                self.send(self.request(Method::GET, &filesystem_path(ns, id, "/files")).query(&query)).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// Writes a file of a filesystem atomically (parents created); returns the new ETag. With
    /// `if_match` only over that content, with `if_none_match` only when there is no file; the
    /// server answers 412 otherwise.
    pub async fn fs_write_file(
        &self,
        ns: &str,
        id: &str,
        path: &str,
        data: Vec<u8>,
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String> {
        let mut builder = self
            .request(Method::PUT, &filesystem_path(ns, id, "/files"))
            .query(&file(path))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        if let Some(tag) = if_match {
            builder = builder.header(IF_MATCH, tag);
        }
        if if_none_match {
            builder = builder.header(IF_NONE_MATCH, "*");
        }
        let answer = self.send_raw(builder).await?;
        match answer.header(ETAG) {
            Some(tag) => Ok(tag.to_owned()),
            None => Err(answer.call.unexpected(answer.status(), "the write was answered without an ETag")),
        }
    }

    /// Deletes a file or an empty directory of a filesystem.
    pub async fn fs_delete_file(&self, ns: &str, id: &str, path: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &filesystem_path(ns, id, "/files")).query(&file(path))).await
    }

    /// Creates a project: a permission boundary for filesystems.
    pub async fn create_project(&self, ns: &str, req: &CreateProject) -> Result<Project> {
        self.create_in(ns, "/projects", req).await
    }

    /// A page of the projects the token may see.
    pub async fn list_projects(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Project>> {
        self.list_in(ns, "/projects", limit, cursor).await
    }

    /// Deletes a project; the server refuses while filesystems belong to it.
    pub async fn delete_project(&self, ns: &str, id: &str) -> Result<()> {
        self.delete_in(ns, "/projects", id).await
    }
}
