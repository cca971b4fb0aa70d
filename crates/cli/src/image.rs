//! The image subcommands: `image import NAME ./img.tar [--public]` (streamed, with a progress
//! line on a terminal), `image pull NAME SOURCE [--secret NAME] [--public]` (one request; a
//! spinner and the time elapsed on a terminal), `image list`, `image show NAME`, `image rm NAME`. Without `--public`
//! they act on a namespace's images (`--ns`), which sees its own and the public ones; with it,
//! on the public images, which only the platform admin publishes and deletes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use bulkhead_api::Image;
use clap::{Args, Subcommand};

use crate::commands::{all_pages, client};
use crate::fs::{Progress, REDRAW};
use crate::output;
use crate::units::format_bytes;
use crate::Global;

/// Which images a command is about: a namespace's, or the public ones.
#[derive(Args)]
pub struct Scope {
    /// The namespace.
    #[arg(long, env = "BULKHEAD_NAMESPACE", required_unless_present = "public")]
    ns: Option<String>,
    /// The public images every namespace may use (platform admin).
    #[arg(long, conflicts_with = "ns")]
    public: bool,
}

impl Scope {
    /// The namespace, or `None` for the public images.
    fn namespace(&self) -> Option<&str> {
        if self.public {
            None
        } else {
            self.ns.as_deref()
        }
    }
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import an OCI image layout or a `docker save` archive (.tar, .tar.gz, .tar.zst) as image
    /// NAME; `--public` publishes it for every namespace (platform admin).
    Import {
        #[command(flatten)]
        scope: Scope,
        /// The image's name.
        name: String,
        /// The archive.
        archive: PathBuf,
    },
    /// Pull SOURCE (`registry/repo:tag` or `registry/repo@sha256:<hex>`) from its OCI registry
    /// as image NAME; `--public` publishes it for every namespace (platform admin, anonymous
    /// pulls only).
    Pull {
        #[command(flatten)]
        scope: Scope,
        /// The image's name.
        name: String,
        /// The image reference: `registry/repo:tag` or `registry/repo@sha256:<hex>`.
        source: String,
        /// A secret of the namespace holding the registry credentials (`user:password`, or
        /// `{"username", "password"}`).
        #[arg(long, value_name = "NAME", conflicts_with = "public")]
        secret: Option<String>,
    },
    /// Build an image: run commands in a sandbox of another image (with the namespace's
    /// egress ceiling) and save its root.
    Build {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// The new image's name.
        name: String,
        /// The image to start from.
        #[arg(long, default_value = "default")]
        from: String,
        /// A shell command to run (`sh -c`), as the image's user; repeatable, run in order.
        #[arg(long = "run", value_name = "COMMAND", required = true)]
        run: Vec<String>,
    },
    /// List a namespace's images and the public ones (`--public`: the public ones only).
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        scope: Scope,
    },
    /// Show one image, by name or id.
    Show {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        /// A name or an img_… id.
        name: String,
    },
    /// Delete an image, by name or id; refused while a sandbox uses it.
    #[command(alias = "delete")]
    Rm {
        #[command(flatten)]
        scope: Scope,
        /// A name or an img_… id.
        name: String,
    },
}

/// The frames of the spinner a pull shows while the server works.
const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

const IMAGE_HEADERS: [&str; 6] = ["ID", "NAME", "SCOPE", "SIZE", "DIGEST", "CREATED"];

fn image_row(i: &Image) -> Vec<String> {
    vec![
        i.id.clone(),
        i.name.clone(),
        i.namespace.clone().unwrap_or_else(|| "public".to_owned()),
        format_bytes(i.size_bytes),
        short_digest(&i.digest),
        i.created_at.clone(),
    ]
}

/// `sha256:` and the first 12 hex digits, as tables show a digest.
pub(crate) fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}", hex.chars().take(12).collect::<String>())
}

pub async fn image(cmd: ImageCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        ImageCmd::Import { scope, name, archive } => {
            let meta = std::fs::metadata(&archive).with_context(|| format!("cannot read {}", archive.display()))?;
            if !meta.is_file() {
                bail!("{}: not a file (an OCI image layout or docker save archive)", archive.display());
            }
            let total = format_bytes(meta.len());
            let sent = Arc::new(AtomicU64::new(0));
            let mut progress = Progress::new();
            let upload = c.import_image(scope.namespace(), &name, &archive, sent.clone());
            tokio::pin!(upload);
            let mut tick = tokio::time::interval(REDRAW);
            let image = loop {
                tokio::select! {
                    r = &mut upload => break r?,
                    _ = tick.tick(), if progress.tty => {
                        let n = sent.load(Ordering::Relaxed);
                        let line = if n >= meta.len() {
                            format!("importing {name}: {total} sent, unpacking ... {}s", progress.started.elapsed().as_secs())
                        } else {
                            format!("importing {name}: {} of {total} sent", format_bytes(n))
                        };
                        progress.draw(&line);
                    }
                }
            };
            progress.finish(&format!(
                "imported {} ({}) in {}: {}, {} layers, {} unpacked",
                image.name,
                image.id,
                progress.elapsed(),
                short_digest(&image.digest),
                image.layers.len(),
                format_bytes(image.size_bytes)
            ));
            if global.json {
                output::json(&image)?;
            }
        }
        ImageCmd::Pull { scope, name, source, secret } => {
            let pull = c.pull_image(scope.namespace(), &name, &source, secret.as_deref());
            let image = awaited(pull, &format!("pulling {source} as {name}"), "pulled").await?;
            if global.json {
                output::json(&image)?;
            }
        }
        ImageCmd::Build { ns, name, from, run } => {
            let run: Vec<Vec<String>> = run.into_iter().map(|cmd| vec!["sh".into(), "-c".into(), cmd]).collect();
            let build = c.build_image(&ns, &name, &from, &run);
            let image = awaited(build, &format!("building {name} from {from}"), "built").await?;
            if global.json {
                output::json(&image)?;
            }
        }
        ImageCmd::List { scope } => {
            let ns = scope.namespace();
            let images = all_pages(|cursor| {
                let c = &c;
                async move { c.list_images(ns, Some(1000), cursor.as_deref()).await }
            })
            .await?;
            output::list(global.json, &images, &IMAGE_HEADERS, image_row)?;
        }
        ImageCmd::Show { ns, name } => {
            let i = c.get_image(&ns, &name).await?;
            if global.json {
                output::json(&i)?;
            } else {
                let mut pairs = vec![
                    ("id", i.id.clone()),
                    ("name", i.name.clone()),
                    ("scope", i.namespace.clone().unwrap_or_else(|| "public".to_owned())),
                    ("digest", i.digest.clone()),
                    ("size", format_bytes(i.size_bytes)),
                    ("layers", i.layers.len().to_string()),
                    ("created", i.created_at.clone()),
                    ("user", i.config.user.clone().unwrap_or_else(|| "root".to_owned())),
                    ("workdir", i.config.working_dir.clone().unwrap_or_else(|| "/".to_owned())),
                ];
                if !i.config.entrypoint.is_empty() {
                    pairs.push(("entrypoint", i.config.entrypoint.join(" ")));
                }
                if !i.config.cmd.is_empty() {
                    pairs.push(("cmd", i.config.cmd.join(" ")));
                }
                for e in &i.config.env {
                    pairs.push(("env", e.clone()));
                }
                output::fields(&pairs);
            }
        }
        ImageCmd::Rm { scope, name } => {
            c.delete_image(scope.namespace(), &name).await?;
            output::note(global.json, format_args!("deleted image {name}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for `request` (one API call that makes an image), drawing `doing` with a spinner and
/// the seconds elapsed on a terminal, then one line saying what was `done`.
async fn awaited(
    request: impl std::future::Future<Output = bulkhead_client::Result<Image>>,
    doing: &str,
    done: &str,
) -> anyhow::Result<Image> {
    let mut progress = Progress::new();
    tokio::pin!(request);
    let mut tick = tokio::time::interval(REDRAW);
    let mut frame = 0usize;
    let image = loop {
        tokio::select! {
            r = &mut request => break r?,
            _ = tick.tick(), if progress.tty => {
                frame = (frame + 1) % SPINNER.len();
                progress.draw(&format!("{doing} {} {}s", SPINNER[frame], progress.started.elapsed().as_secs()));
            }
        }
    };
    progress.finish(&format!(
        "{done} {} ({}) in {}: {}, {} layers, {} unpacked",
        image.name,
        image.id,
        progress.elapsed(),
        short_digest(&image.digest),
        image.layers.len(),
        format_bytes(image.size_bytes)
    ));
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_shortened_for_tables() {
        assert_eq!(short_digest(&format!("sha256:{}", "ab".repeat(32))), "sha256:abababababab");
        assert_eq!(short_digest("odd"), "sha256:odd");
    }
}
