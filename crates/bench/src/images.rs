//! Sandboxes on images: every server the bench starts boots the platform's default image (an
//! OCI image layout tar built by `scripts/build-default-image`), unpacked once per bench run
//! into a public layer store of the run's own ([`DefaultImage::import`], timed), and the bare
//! OCI runtime's baseline runs on the same layers ([`root_of_default`]). [`measure`] times
//! create → first exec output from the default image and from a template (a snapshot of a
//! sandbox that wrote a few MiB under `/opt`), alternating, and the snapshot itself
//! (target: template ≤ 1.1× default at the median).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::{CreateSandbox, ExecRequest};
use bulkhead_client::Client;
use bulkhead_runtime::image::{ImportSource, LayerStore, UnpackOptions};
use serde::Serialize;

use crate::load::Density;
use crate::{stat, Stat};

/// Where `scripts/build-default-image` leaves the default image (a link to its latest build).
pub const DEFAULT_IMAGE_CACHE: &str = "/var/tmp/bulkhead-images/default.tar";
/// Where a package installs the default image.
pub const DEFAULT_IMAGE_INSTALLED: &str = "/var/lib/bulkhead/default-image.tar";
/// The public image every server imports from `--default-image`.
const DEFAULT_IMAGE_NAME: &str = "default";
/// The private image the template runs start from.
const TEMPLATE_NAME: &str = "bench-template";
/// Untimed creates on each image before the measured ones (the first mounts of its layers).
const WARMUP: usize = 3;
/// Snapshots of the template's sandbox that are timed (the first is the template).
const SNAPSHOTS: usize = 3;
/// What the template's sandbox writes under `/opt/bench`: one file of random bytes of
/// [`TEMPLATE_BLOB_MIB`] and [`TEMPLATE_SMALL_FILES`] small files, as an install would.
const TEMPLATE_BLOB_MIB: u64 = 8;
const TEMPLATE_SMALL_FILES: usize = 200;

/// The default image archive: `given` (the bench's `--default-image` or
/// `$BULKHEAD_DEFAULT_IMAGE`), else [`DEFAULT_IMAGE_CACHE`], else [`DEFAULT_IMAGE_INSTALLED`].
/// Errors: the one named is missing, or neither default exists (naming the script that builds
/// it).
pub fn find_default_image(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let usable = |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.len() > 0).unwrap_or(false);
    let from_env = std::env::var_os("BULKHEAD_DEFAULT_IMAGE").filter(|p| !p.is_empty()).map(PathBuf::from);
    if let Some(path) = given.map(Path::to_path_buf).or(from_env) {
        if usable(&path) {
            return Ok(path);
        }
        bail!(
            "the default image {} is missing or empty: build it with `scripts/build-default-image` (as root; it \
             prints the path), or name one with --default-image",
            path.display()
        );
    }
    for path in [DEFAULT_IMAGE_CACHE, DEFAULT_IMAGE_INSTALLED].map(PathBuf::from) {
        if usable(&path) {
            return Ok(path);
        }
    }
    bail!(
        "no default image: neither {DEFAULT_IMAGE_CACHE} nor {DEFAULT_IMAGE_INSTALLED} exists; build it with \
         `scripts/build-default-image` (as root), or name one with --default-image or $BULKHEAD_DEFAULT_IMAGE"
    )
}

/// The default image of a bench run, unpacked into the run's own public layer store.
#[derive(Debug, Clone)]
pub struct DefaultImage {
    /// The OCI image layout tar (`--default-image` of every server).
    pub archive: PathBuf,
    /// The run's public layer store (`--public-layers` of every server).
    pub public_layers: PathBuf,
    /// How long the first import (reading, verifying and unpacking every layer) took.
    pub import: Duration,
    /// The unpacked size of its layers in bytes, and how many there are.
    pub size_bytes: u64,
    pub layers: usize,
}

impl DefaultImage {
    /// Unpacks `archive` into a new layer store at `public_layers`, timed, with the bounds a
    /// server imports with (setuid files allowed, 8 GiB, 4 Mi entries), so that the servers
    /// started after only record it: their starts do not wait for the unpack. Errors: the
    /// archive is not an image, or the store cannot be written.
    pub fn import(archive: &Path, public_layers: &Path) -> anyhow::Result<DefaultImage> {
        let t = Instant::now();
        let store = LayerStore::open(public_layers)
            .with_context(|| format!("open the public layer store {}", public_layers.display()))?;
        let options = UnpackOptions { allow_setuid: true, max_bytes: 8 << 30, max_entries: 1 << 22 };
        let stored = store
            .import(&ImportSource::Archive(archive.to_owned()), &options)
            .with_context(|| format!("import the default image {}", archive.display()))?;
        Ok(DefaultImage {
            archive: archive.to_owned(),
            public_layers: public_layers.to_owned(),
            import: t.elapsed(),
            size_bytes: stored.size_bytes,
            layers: stored.layers.len(),
        })
    }

    /// The arguments of `bulkhead serve` that boot sandboxes from this image.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            "image".into(),
            "--default-image".into(),
            self.archive.display().to_string(),
            "--public-layers".into(),
            self.public_layers.display().to_string(),
        ]
    }
}

/// The unpacked layers of the public image `default`, bottom first, as the server lists them
/// to its admin (`GET /v1/images`) and as they lie in its public store `public_layers`: the
/// root of the raw OCI runtime's baseline.
pub async fn root_of_default(admin: &Client, public_layers: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut cursor: Option<String> = None;
    loop {
        let page = admin.list_images(None, Some(100), cursor.as_deref()).await.context("list the public images")?;
        if let Some(image) = page.items.iter().find(|i| i.name == DEFAULT_IMAGE_NAME) {
            let store = LayerStore::open(public_layers)
                .with_context(|| format!("open the public layer store {}", public_layers.display()))?;
            let layers: Vec<PathBuf> = image.layers.iter().map(|d| store.layer_path(d)).collect();
            if let Some(missing) = layers.iter().find(|p| !p.is_dir()) {
                bail!("layer {} of the default image is not unpacked", missing.display());
            }
            return Ok(layers);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => bail!("the server has no public image `{DEFAULT_IMAGE_NAME}`: did it import --default-image?"),
        }
    }
}

/// The figures of the images section.
#[derive(Debug, Serialize)]
pub struct ImagesReport {
    /// The default image's archive.
    pub default_image: String,
    /// Its first import into the run's public layer store, in milliseconds.
    pub import_ms: f64,
    /// Its unpacked size in MiB, and its layers.
    pub unpacked_mib: f64,
    pub layers: usize,
    /// Create → first exec output (`echo ready`) from the default image.
    pub default_first_output: Stat,
    /// The same from the template, runs alternating with the default image's.
    pub template_first_output: Stat,
    /// `template_first_output.p50_ms / default_first_output.p50_ms` (target ≤ 1.1).
    pub template_vs_default_p50: f64,
    /// The same from a warm pool of the default image (a ready pool sandbox before each run,
    /// waited for untimed): the claim, the binding and the first exec (target p50 ≤ 5 ms,
    /// p99 ≤ 15 ms).
    pub pool_first_output: Stat,
    /// `pool_first_output.p50_ms / default_first_output.p50_ms`.
    pub pool_vs_default_p50: f64,
    /// Ready pool sandboxes held at once for the idle figure, and the memory charged to their
    /// cgroups, each (the namespace's `bulkhead_memory_bytes` with nothing else running in it,
    /// over their number), MiB.
    pub pool_idle_sandboxes: u64,
    pub pool_idle_mib_each: f64,
    /// What the template's sandbox wrote under `/opt` before the snapshot, in MiB.
    pub template_written_mib: f64,
    /// `POST .../snapshot` of that sandbox, answered.
    pub snapshot: Stat,
    /// The raw OCI runtime on the default image's layers at the sandboxes' cpu limit, and the
    /// default image's create → first output over it at the median.
    pub raw_oci_image_root: Stat,
    pub default_vs_raw_p50: f64,
    /// Idle sandboxes on the default image held at once (`--only images`; the full run's
    /// density figures are on the default image too).
    pub density: Option<Density>,
}

/// What the images section runs on.
pub struct Section<'a> {
    /// A developer of `ns`: the creates and execs.
    pub developer: &'a Client,
    /// The platform admin: the snapshots and their deletion.
    pub admin: &'a Client,
    pub ns: &'a str,
    /// The sandbox every create asks for (its `image` is set here).
    pub sandbox: &'a CreateSandbox,
    pub runs: usize,
    /// Whether the tier has warm pools (the gvisor tier has none): without them the pool
    /// figures are left empty (NaN).
    pub pools: bool,
}

/// Makes the template (a sandbox of the default image writes a few MiB under `/opt`, then is
/// snapshotted [`SNAPSHOTS`] times, timed; the extra images are deleted), then times `runs`
/// creates → first output of `echo ready` from the default image and from the template,
/// alternating, after [`WARMUP`] untimed ones on each; every sandbox is deleted after its run,
/// and the template at the end. The caller adds the raw baseline and the density.
pub async fn measure(s: &Section<'_>, image: &DefaultImage, raw_image: Stat) -> anyhow::Result<ImagesReport> {
    eprintln!(
        "images: a template ({TEMPLATE_BLOB_MIB} MiB and {TEMPLATE_SMALL_FILES} files under /opt), {SNAPSHOTS} \
         snapshots ..."
    );
    let source = s.developer.create_sandbox(s.ns, s.sandbox).await.context("create the template's sandbox")?;
    let script = format!(
        "set -e; mkdir -p /opt/bench; head -c {} /dev/urandom > /opt/bench/blob; i=0; while [ $i -lt {} ]; do \
         echo $i > /opt/bench/f$i; i=$((i+1)); done; du -sk /opt/bench | cut -f1",
        TEMPLATE_BLOB_MIB << 20,
        TEMPLATE_SMALL_FILES
    );
    let work = ExecRequest { cmd: vec!["sh".into(), "-c".into(), script], ..Default::default() };
    let r = s.developer.exec(s.ns, &source.id, &work).await.context("write the template's files")?;
    let written_kib: f64 = r
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("the template's work printed {:?} (stderr {:?})", r.stdout, r.stderr))?;
    let mut snapshots = Vec::with_capacity(SNAPSHOTS);
    for i in 0..SNAPSHOTS {
        let name = if i == 0 { TEMPLATE_NAME.to_owned() } else { format!("{TEMPLATE_NAME}-{i}") };
        let t = Instant::now();
        s.admin.snapshot_sandbox(s.ns, &source.id, &name).await.with_context(|| format!("snapshot as {name}"))?;
        snapshots.push(t.elapsed());
        if i > 0 {
            s.admin.delete_image(Some(s.ns), &name).await.with_context(|| format!("delete image {name}"))?;
        }
    }
    s.developer.delete_sandbox(s.ns, &source.id).await?;

    let from_default = CreateSandbox { image: None, ..s.sandbox.clone() };
    let from_template = CreateSandbox { image: Some(TEMPLATE_NAME.into()), ..s.sandbox.clone() };
    // The template holds what was written. (`wc -c <`, not `stat`: gVisor 2022-12 refuses
    // coreutils' `statx` flags.)
    let t = s.developer.create_sandbox(s.ns, &from_template).await.context("create from the template")?;
    let check = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), format!("wc -c < /opt/bench/blob; cat /opt/bench/f{}", 7)],
        ..Default::default()
    };
    let r = s.developer.exec(s.ns, &t.id, &check).await?;
    s.developer.delete_sandbox(s.ns, &t.id).await?;
    if r.stdout != format!("{}\n7\n", TEMPLATE_BLOB_MIB << 20) {
        bail!("a sandbox of the template does not see its files: {:?} (stderr {:?})", r.stdout, r.stderr);
    }

    eprintln!("images: create → first output from the default image and the template, {} runs each ...", s.runs);
    for _ in 0..WARMUP {
        create_once(s, &from_default).await?;
        create_once(s, &from_template).await?;
    }
    let (mut d, mut t) = (Vec::with_capacity(s.runs), Vec::with_capacity(s.runs));
    for i in 0..s.runs {
        // Which goes first alternates too.
        if i % 2 == 0 {
            d.push(create_once(s, &from_default).await?);
            t.push(create_once(s, &from_template).await?);
        } else {
            t.push(create_once(s, &from_template).await?);
            d.push(create_once(s, &from_default).await?);
        }
    }
    s.admin.delete_image(Some(s.ns), TEMPLATE_NAME).await.context("delete the template")?;

    let (p, pool_idle_mib_each) = if s.pools { pool_figures(s, &from_default).await? } else { (Vec::new(), f64::NAN) };
    let pool_first_output = stat(p);
    let (default_first_output, template_first_output) = (stat(d), stat(t));
    Ok(ImagesReport {
        default_image: image.archive.display().to_string(),
        import_ms: image.import.as_secs_f64() * 1000.0,
        unpacked_mib: image.size_bytes as f64 / (1 << 20) as f64,
        layers: image.layers,
        template_vs_default_p50: template_first_output.p50_ms / default_first_output.p50_ms,
        pool_vs_default_p50: pool_first_output.p50_ms / default_first_output.p50_ms,
        pool_idle_sandboxes: POOL_IDLE,
        pool_idle_mib_each,
        pool_first_output,
        default_vs_raw_p50: default_first_output.p50_ms / raw_image.p50_ms,
        default_first_output,
        template_first_output,
        template_written_mib: written_kib / 1024.0,
        snapshot: stat(snapshots),
        raw_oci_image_root: raw_image,
        density: None,
    })
}

/// Create → first output from a warm pool of the default image (a ready pool sandbox before
/// each run, after [`WARMUP`] untimed ones), and the memory charged per ready pool sandbox
/// with [`POOL_IDLE`] of them held idle, in MiB.
async fn pool_figures(s: &Section<'_>, from_default: &CreateSandbox) -> anyhow::Result<(Vec<Duration>, f64)> {
    eprintln!("images: create → first output from a warm pool of the default image, {} runs ...", s.runs);
    // The public default image: its pool in a namespace is the platform admin's to size.
    let pool_image = "default";
    s.admin.set_pool(s.ns, pool_image, 1).await.context("size the default image's pool")?;
    let mut p = Vec::with_capacity(s.runs);
    for i in 0..WARMUP + s.runs {
        wait_ready(s, pool_image).await?;
        let took = create_once(s, from_default).await?;
        if i >= WARMUP {
            p.push(took);
        }
    }
    s.admin.delete_pool(s.ns, pool_image).await.context("remove the pool")?;
    // The idle cost of a ready pool sandbox: what the namespace's cgroups hold with the pool
    // full and nothing else running in the namespace, once the sandboxes settled.
    wait_size(s, pool_image, 0).await?;
    s.admin.set_pool(s.ns, pool_image, POOL_IDLE).await.context("size the pool for the idle figure")?;
    wait_size(s, pool_image, POOL_IDLE).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = s.admin.namespace_metrics(s.ns).await.context("read the namespace's metrics")?;
    let prefix = format!("bulkhead_memory_bytes{{namespace=\"{}\"}} ", s.ns);
    let charged: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .context("no bulkhead_memory_bytes for the namespace")?;
    s.admin.delete_pool(s.ns, pool_image).await.context("remove the pool")?;
    Ok((p, charged / (1 << 20) as f64 / POOL_IDLE as f64))
}

/// Ready sandboxes the idle figure of a warm pool holds at once.
const POOL_IDLE: u64 = 8;

/// Waits (at most two minutes) until the namespace's pool of `image` holds exactly `ready`
/// ready sandboxes and is starting none (`0`: the pool is gone or empty).
async fn wait_size(s: &Section<'_>, image: &str, ready: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pools = s.developer.list_pools(s.ns).await?;
        let now = pools.items.iter().find(|p| p.image == image).map_or((0, 0), |p| (p.ready, p.starting));
        if now == (ready, 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the warm pool of {image} did not reach {ready} ready sandboxes (it has {now:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (untimed, at most a minute) until the namespace's pool of `image` has a ready sandbox.
async fn wait_ready(s: &Section<'_>, image: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pools = s.developer.list_pools(s.ns).await?;
        if pools.items.iter().any(|p| p.image == image && p.ready > 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the warm pool of {image} did not fill within a minute");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One create → first output of `echo ready` of `sandbox`, timed; the sandbox is deleted
/// after, untimed.
async fn create_once(s: &Section<'_>, sandbox: &CreateSandbox) -> anyhow::Result<Duration> {
    let echo = ExecRequest { cmd: vec!["echo".into(), "ready".into()], ..Default::default() };
    let t = Instant::now();
    let created = s.developer.create_sandbox(s.ns, sandbox).await?;
    let r = s.developer.exec(s.ns, &created.id, &echo).await?;
    let elapsed = t.elapsed();
    s.developer.delete_sandbox(s.ns, &created.id).await?;
    if r.stdout != "ready\n" {
        bail!("unexpected output {:?} from image {:?}", r.stdout, sandbox.image);
    }
    Ok(elapsed)
}

/// Prints the figures of [`measure`].
pub fn print(r: &ImagesReport) {
    println!(
        "\nimages: the default image {} ({:.0} MiB unpacked, {} layers), first import {:.1} s",
        r.default_image,
        r.unpacked_mib,
        r.layers,
        r.import_ms / 1000.0
    );
    crate::row("baseline: raw OCI runtime, its layers, sandbox cpu", &r.raw_oci_image_root);
    crate::row("create → first exec output, default image", &r.default_first_output);
    crate::row("create → first exec output, template", &r.template_first_output);
    crate::row("create → first exec output, warm pool", &r.pool_first_output);
    crate::row(&format!("snapshot of a sandbox ({:.1} MiB written)", r.template_written_mib), &r.snapshot);
    println!(
        "template / default at p50: {:.2}x (target ≤ 1.1x); default image vs raw OCI runtime on its layers at p50: \
         {:.2}x; warm pool: p50 {:.1} ms, p99 {:.1} ms (target ≤ 5 ms, ≤ 15 ms), {:.3}x the cold default",
        r.template_vs_default_p50,
        r.default_vs_raw_p50,
        r.pool_first_output.p50_ms,
        r.pool_first_output.p99_ms,
        r.pool_vs_default_p50
    );
    println!(
        "warm pool: {} ready sandboxes held idle, {:.2} MiB charged to their cgroups each",
        r.pool_idle_sandboxes, r.pool_idle_mib_each
    );
    if let Some(d) = &r.density {
        crate::print_density(d);
    }
}
