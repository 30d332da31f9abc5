//! The steps that bring a host's new release directory into being: `present`, `reuse` (a
//! verified copy of an identical release), `delta` (only what the current release lacks)
//! and `upload` (the whole artifact). A copy or a delta that the host cannot make exactly
//! falls back to a whole upload: that is the step's recorded outcome, not another plan.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::Ctx;
use crate::artifact::delta::{self, Delta};
use crate::artifact::manifest::{self, Manifest};
use crate::artifact::{Codec, Compressed, Packed};
use crate::commands::{self, exit};
use crate::execute::{self, RemoteError, timeout};
use crate::output::Event;
use crate::plan::Step;
use crate::plan::facts::ReleaseTree;
use crate::shell::Cmd;
use crate::transport::ExecRequest;
use crate::transport::fleet::Conn;

/// How a release directory got there.
#[derive(Debug, Default)]
pub struct Sourced {
    /// `uploaded`, `delta`, `reused` or `present`.
    pub source: &'static str,
    /// Bytes streamed to the host (compressed).
    pub sent: u64,
    /// Why a delta or a copy was given up and the whole artifact sent instead.
    pub fallback: Option<String>,
}

/// A delta built once, when a host first needs it.
type DeltaCell = Arc<tokio::sync::OnceCell<Result<Arc<Delta>, String>>>;

/// The whole artifact compressed for upload, once per compression (zstd; gzip for hosts
/// without `zstd`), when a host first needs it: a redeploy whose hosts all take a delta
/// compresses nothing. Likewise each delta, once per (current manifest, compression).
pub struct Uploads<'a> {
    packed: &'a Packed,
    zstd: tokio::sync::OnceCell<Result<Arc<Compressed>, String>>,
    gzip: tokio::sync::OnceCell<Result<Arc<Compressed>, String>>,
    /// The current releases' manifests, by their sha256 (read by the facts step).
    manifests: BTreeMap<String, Arc<Manifest>>,
    deltas: Mutex<BTreeMap<(String, &'static str), DeltaCell>>,
    shared: Vec<String>,
}

impl<'a> Uploads<'a> {
    pub fn new(
        packed: &'a Packed,
        manifests: BTreeMap<String, Arc<Manifest>>,
        shared: Vec<String>,
    ) -> Uploads<'a> {
        Uploads {
            packed,
            zstd: tokio::sync::OnceCell::new(),
            gzip: tokio::sync::OnceCell::new(),
            manifests,
            deltas: Mutex::new(BTreeMap::new()),
            shared,
        }
    }

    fn cell(&self, codec: Codec) -> &tokio::sync::OnceCell<Result<Arc<Compressed>, String>> {
        match codec {
            Codec::Zstd => &self.zstd,
            Codec::Gzip => &self.gzip,
        }
    }

    async fn whole(&self, codec: Codec) -> Result<Arc<Compressed>, String> {
        let (tar, manifest) = (self.packed.lazy_tar(), self.packed.manifest.clone());
        let mtime = self.packed.files_mtime;
        let dir = self.packed.temp_dir().to_owned();
        self.cell(codec)
            .get_or_init(|| async move {
                let job = move || {
                    // A directory's tar is written by the first upload that needs it.
                    let tar = tar.path()?;
                    crate::artifact::compress(tar, manifest.as_deref(), codec, &dir, mtime).map_err(
                        |e| format!("cannot compress the artifact: {}", crate::error::chain(&e)),
                    )
                };
                match tokio::task::spawn_blocking(job).await {
                    Ok(made) => made.map(Arc::new),
                    Err(e) => Err(format!("compressing the artifact failed: {e}")),
                }
            })
            .await
            .clone()
    }

    /// The size of a whole upload with `codec` if this run made it, else the artifact's
    /// uncompressed size: what `bytes_sent` is compared with.
    pub fn size(&self, codec: Codec) -> u64 {
        self.cell(codec)
            .get()
            .and_then(|made| made.as_ref().ok())
            .map_or(self.packed.tar_size, |c| c.upload_size())
    }

    /// The delta from the release whose manifest has `base` (sha256), built once.
    async fn delta(&self, base: &str, codec: Codec) -> Result<Arc<Delta>, String> {
        let cell = self
            .deltas
            .lock()
            .expect("lock")
            .entry((base.to_owned(), crate::plan::step::codec_str(codec)))
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let old = self
                .manifests
                .get(base)
                .ok_or_else(|| "the current release's manifest was not read".to_owned())?;
            let new = self
                .packed
                .manifest
                .as_ref()
                .ok_or_else(|| "the artifact has no manifest".to_owned())?;
            let packed = self.packed;
            let dir = packed.temp_dir().to_owned();
            let make = || {
                let changes = delta::changes(old, new, &self.shared);
                delta::build(packed, new, &changes, codec, &dir)
            };
            let made = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(make),
                _ => make(),
            };
            made.map(Arc::new)
                .map_err(|e| format!("cannot make the delta: {}", crate::error::chain(&e)))
        })
        .await
        .clone()
    }
}

/// Reads the manifest of the current release of each distinct manifest in `trees` (from
/// the first host that has it, compressed on the way), for the hosts a delta may go to:
/// `artifact` is the artifact's sha256 when deltas are wanted at all.
/// Per host: `None` when no delta is possible, else the manifest or why it could not be
/// read.
pub async fn read_manifests(
    conns: &[&Conn<'_>],
    trees: &[&ReleaseTree],
    deploy_to: &str,
    artifact: Option<&str>,
) -> Vec<Option<Result<Arc<Manifest>, String>>> {
    // A host that already holds the artifact gets a copy, never a delta: nothing to read.
    let may_delta = |t: &ReleaseTree| {
        artifact.is_some_and(|sha| crate::plan::same_artifact(t, sha).is_none())
            && t.delta
            && t.current.is_some()
    };
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in trees.iter().enumerate() {
        if let (true, Some(sha)) = (may_delta(t), &t.manifest) {
            first.entry(sha.as_str()).or_insert(i);
        }
    }
    let reads = first.iter().map(|(sha, &i)| async move {
        let t = trees[i];
        let current = t
            .current
            .as_deref()
            .expect("grouped hosts have a current release");
        let codec = if t.zstd { Codec::Zstd } else { Codec::Gzip };
        let read = fetch_manifest(conns[i], deploy_to, current, sha, codec).await;
        (sha.to_string(), read.map(Arc::new))
    });
    let read: BTreeMap<String, Result<Arc<Manifest>, String>> =
        futures::future::join_all(reads).await.into_iter().collect();
    trees
        .iter()
        .map(|t| match (may_delta(t), &t.manifest) {
            (true, Some(sha)) => read.get(sha).cloned(),
            _ => None,
        })
        .collect()
}

/// Reads the manifest of the host's current release (compressed on the way) and checks it
/// is the one its sha256 names.
async fn fetch_manifest(
    c: &Conn<'_>,
    deploy_to: &str,
    current: &str,
    sha256: &str,
    codec: Codec,
) -> Result<Manifest, String> {
    let path = format!("{deploy_to}/releases/{current}/{}", manifest::PATH);
    let cmd = codec.compress_cmd().raw("<").arg(&path);
    // The manifest can pass the kept-output limit: collected here instead.
    let bytes = Mutex::new(Vec::new());
    let sink = |stream: crate::transport::Stream, chunk: &[u8]| {
        if stream == crate::transport::Stream::Stdout {
            bytes.lock().expect("lock").extend_from_slice(chunk);
        }
    };
    let what = "reading the current release's manifest";
    execute::exec(
        c,
        "delta",
        what,
        ExecRequest::new(&cmd, timeout::COPY).output(&sink),
    )
    .await
    .map_err(|e| e.message)?;
    let bytes = bytes.into_inner().expect("lock");
    let text = codec
        .decompress_bytes(&bytes)
        .map_err(|e| format!("the current release's manifest arrived damaged: {e}"))?;
    if manifest::sha256_hex(&text) != sha256 {
        return Err("the current release's manifest changed while it was read".into());
    }
    Manifest::parse(&text).map_err(|e| format!("`{path}`: {e}"))
}

/// Runs a source step (`present`, `reuse`, `delta`, `upload`) on `c`.
pub async fn run(ctx: &Ctx<'_>, c: &Conn<'_>, step: &Step) -> Result<Sourced, RemoteError> {
    let host = c.host.name.as_str();
    let name = step.name();
    let (Some(packed), Some(uploads)) = (ctx.artifact, ctx.uploads) else {
        return Err(RemoteError::new(host, name, "no artifact to upload"));
    };
    let inv = ctx.inventory;
    let deploy_to = &inv.app.deploy_to;
    let artifact = inv.artifact.as_ref();
    let no_paths: Vec<String> = Vec::new();
    let release = ctx.release;
    // REVISION, shared links and the rename run in the same script as the upload or the
    // copy: one round trip per host.
    let finish = commands::release::finish(
        deploy_to,
        release,
        &ctx.revision,
        artifact.map_or(&no_paths, |a| &a.shared_dirs),
        artifact.map_or(&no_paths, |a| &a.shared_files),
        inv.app.user.as_deref(),
        c.transport.sudo_login().is_some(),
    );
    let mut sent = 0;
    let fallback: Option<String>;
    let codec = match step {
        Step::Present { .. } => {
            return Ok(Sourced {
                source: "present",
                ..Sourced::default()
            });
        }
        Step::Reuse { from, .. } => {
            // Only planned with a manifest to verify the copy against.
            let manifest = packed.manifest.as_ref().ok_or_else(|| {
                RemoteError::new(
                    host,
                    name,
                    "the artifact has no manifest to check a copy against",
                )
            })?;
            ctx.step(c, "copying identical release");
            let copy = commands::release::reuse(
                deploy_to,
                from,
                release,
                &manifest.sha256(),
                inv.app.user.as_deref().unwrap_or(""),
            );
            let cmd = Cmd::seq([copy, finish.clone()]);
            let what = "copying the identical release";
            let o = execute::output(c, name, what, ExecRequest::new(&cmd, timeout::COPY)).await?;
            if o.success() {
                return Ok(Sourced {
                    source: "reused",
                    ..Sourced::default()
                });
            }
            if o.exit != crate::transport::Exit::Code(exit::REUSE_UNVERIFIED) {
                return Err(RemoteError::from_output(host, name, what, &o));
            }
            let why = format!("release {from} no longer matches its manifest");
            ctx.note(&format!("{host}: {why}; sending the whole artifact"));
            fallback = Some(why);
            ctx.codec(c)
        }
        Step::Delta { from, .. } => {
            let codec = ctx.codec(c);
            let base = ctx
                .facts
                .get(host)
                .and_then(|t| t.manifest.clone())
                .unwrap_or_default();
            match uploads.delta(&base, codec).await {
                Ok(delta) => {
                    ctx.step(c, "uploading changes");
                    match upload_delta(ctx, c, from, &base, finish.clone(), &delta, codec).await {
                        Ok(n) => {
                            return Ok(Sourced {
                                source: "delta",
                                sent: n,
                                fallback: None,
                            });
                        }
                        Err(DeltaFailure::Transport(e)) => return Err(e),
                        Err(DeltaFailure::Host { sent: n, why }) => {
                            ctx.note(&format!("{host}: {why}; sending the whole artifact"));
                            sent = n;
                            fallback = Some(why);
                        }
                    }
                }
                Err(why) => fallback = Some(why),
            }
            codec
        }
        Step::Upload {
            codec,
            why,
            fallback: fell,
            ..
        } => {
            fallback = why.clone().filter(|_| *fell);
            if let Some(why) = &fallback {
                ctx.note(&format!("{host}: {why}; sending the whole artifact"));
            }
            *codec
        }
        other => {
            return Err(RemoteError::new(
                host,
                other.name(),
                "not a step that makes a release",
            ));
        }
    };
    ctx.step(c, "uploading");
    let compressed = uploads
        .whole(codec)
        .await
        .map_err(|e| RemoteError::new(host, name, e))?;
    let n = upload(ctx, c, name, finish, &compressed).await?;
    Ok(Sourced {
        source: "uploaded",
        sent: sent + n,
        fallback,
    })
}

/// Streams the packed artifact into `releases/<id>.partial`, verified on the host.
async fn upload(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    step: &str,
    finish: Cmd,
    packed: &Compressed,
) -> Result<u64, RemoteError> {
    let host = c.host.name.as_str();
    let file = tokio::fs::File::open(&*packed.file).await.map_err(|e| {
        RemoteError::new(host, step, format!("cannot open the packed artifact: {e}"))
    })?;
    let receive = commands::release::receive(
        &ctx.inventory.app.deploy_to,
        ctx.release,
        &packed.upload_sha256,
        packed.codec.decompress_cmd(),
        packed.prefix.len() as u64,
    );
    let cmd = Cmd::seq([receive, finish]);
    let total = packed.upload_size();
    let data = std::io::Cursor::new(packed.prefix.clone()).chain(file);
    let (result, sent) = stream(ctx, c, &cmd, Box::new(data), total, false).await;
    let what = "extracting and finishing the release";
    match result {
        Ok(o) if o.success() => Ok(sent),
        Ok(o) if o.exit == crate::transport::Exit::Code(exit::SHA_MISMATCH) => Err(
            RemoteError::from_output(host, step, what, &o).saying(format!(
                "the artifact arrived damaged (sha256 differs after {sent} bytes); nothing was kept"
            )),
        ),
        other => Err(RemoteError::from_result(host, step, what, &other)),
    }
}

/// Why a delta upload did not make the release.
enum DeltaFailure {
    /// The host could not build it exactly (or the bytes arrived damaged): send it whole.
    Host { sent: u64, why: String },
    /// The connection failed: the host failed.
    Transport(RemoteError),
}

/// Streams a delta into `releases/<id>.partial`, built from the current release and
/// verified against the new manifest on the host, then finishes the release.
async fn upload_delta(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    current: &str,
    current_manifest: &str,
    finish: Cmd,
    delta: &Delta,
    codec: Codec,
) -> Result<u64, DeltaFailure> {
    let host = c.host.name.as_str();
    let file = tokio::fs::File::open(&*delta.file).await.map_err(|e| {
        DeltaFailure::Transport(RemoteError::new(
            host,
            "delta",
            format!("cannot open the delta of the artifact: {e}"),
        ))
    })?;
    let args = commands::release::DeltaArgs {
        deploy_to: &ctx.inventory.app.deploy_to,
        id: ctx.release,
        current,
        current_manifest,
        manifest: &delta.manifest_sha256,
        upload_sha256: &delta.sha256,
        decompress: codec.decompress_cmd(),
        edits_len: delta.edits_len,
        service_user: ctx.inventory.app.user.as_deref().unwrap_or(""),
    };
    let cmd = Cmd::seq([commands::release::delta(&args), finish]);
    let (result, sent) = stream(ctx, c, &cmd, Box::new(file), delta.size, true).await;
    let why = |why: &str| DeltaFailure::Host {
        sent,
        why: why.to_owned(),
    };
    match result {
        Ok(o) if o.success() => Ok(sent),
        Ok(o) if o.exit == crate::transport::Exit::Code(exit::DELTA_FAILED) => Err(why(
            "the release built from the current one did not match the new manifest",
        )),
        Ok(o) if o.exit == crate::transport::Exit::Code(exit::SHA_MISMATCH) => {
            Err(why("the delta arrived damaged"))
        }
        Ok(o) => Err(why(&RemoteError::from_output(
            host,
            "delta",
            "building the release from a delta",
            &o,
        )
        .message)),
        Err(e) => Err(DeltaFailure::Transport(RemoteError::from_exec(
            host,
            "delta",
            "uploading the delta",
            &e,
        ))),
    }
}

/// Streams `data` (`total` bytes) into `cmd` on the host, with progress events; returns the
/// command's result and the bytes sent.
async fn stream(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    cmd: &Cmd,
    data: Box<dyn AsyncRead + Send + Unpin>,
    total: u64,
    delta: bool,
) -> (
    Result<crate::transport::ExecOutput, crate::transport::ExecError>,
    u64,
) {
    let counter = Arc::new(AtomicU64::new(0));
    let reader = Counting {
        inner: data,
        count: counter.clone(),
    };
    let upload = c
        .transport
        .upload(cmd, Box::new(reader), timeout::upload(total));
    let artifact = ctx.artifact.map_or(0, |a| a.tar_size);
    let progress = || Event::Progress {
        host: &c.host.name,
        sent: counter.load(Ordering::Relaxed),
        total,
        artifact,
        delta,
    };
    let ticker = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            ctx.out.emit(progress());
        }
    };
    let result = tokio::select! {
        r = upload => r,
        () = ticker => unreachable!("the ticker never ends"),
    };
    // The last word, also for a stream shorter than one tick.
    ctx.out.emit(progress());
    (result, counter.load(Ordering::Relaxed))
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}
