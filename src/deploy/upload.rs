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
use crate::artifact::{Codec, Packed};
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
    zstd: WholeCell,
    gzip: WholeCell,
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

    fn cell(&self, codec: Codec) -> &WholeCell {
        match codec {
            Codec::Zstd => &self.zstd,
            Codec::Gzip => &self.gzip,
        }
    }

    /// The whole artifact compressed with `codec`: started on first use, on a thread of
    /// its own; uploads send its frames as they are written.
    async fn whole(&self, codec: Codec) -> Result<Arc<Whole>, String> {
        self.cell(codec)
            .get_or_init(|| Whole::start(self.packed, codec))
            .await
            .clone()
    }

    /// The size of a whole upload with `codec` if this run made it, else the artifact's
    /// uncompressed size: what `bytes_sent` is compared with.
    pub fn size(&self, codec: Codec) -> u64 {
        self.cell(codec)
            .get()
            .and_then(|made| made.as_ref().ok())
            .and_then(|whole| whole.size())
            .unwrap_or(self.packed.tar_size)
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
    let whole = uploads
        .whole(codec)
        .await
        .map_err(|e| RemoteError::new(host, name, e))?;
    let n = upload(ctx, c, name, finish, &whole).await?;
    Ok(Sourced {
        source: "uploaded",
        sent: sent + n,
        fallback,
    })
}

type WholeCell = tokio::sync::OnceCell<Result<Arc<Whole>, String>>;

/// A whole upload's stream: the manifest, then the artifact compressed in frames
/// ([`crate::artifact::compress_framed`]) into a temporary file that uploads follow as it
/// grows, so the first bytes leave while the rest is compressed, and the frames' zstd level
/// follows the link (the fastest upload's pace).
pub struct Whole {
    /// Deleted on drop.
    file: tempfile::TempPath,
    codec: Codec,
    prefix: Vec<u8>,
    state: tokio::sync::watch::Receiver<Compressing>,
    /// How far the fastest upload has read the file.
    pace: Arc<AtomicU64>,
}

#[derive(Clone, Debug, Default)]
struct Compressing {
    /// Bytes of the file written and flushed (whole frames).
    written: u64,
    /// sha256 of the prefix and the file, and the file's size; or why it failed.
    done: Option<Result<(String, u64), String>>,
}

impl Whole {
    async fn start(packed: &Packed, codec: Codec) -> Result<Arc<Whole>, String> {
        let failed = |e: std::io::Error| format!("cannot compress the artifact: {e}");
        let prefix = crate::artifact::prefix(packed.manifest.as_deref(), codec).map_err(failed)?;
        // Created 0600 by tempfile: the artifact may hold anything the project ships.
        let temp = tempfile::Builder::new()
            .prefix("shipit-upload-")
            .tempfile_in(packed.temp_dir())
            .map_err(failed)?;
        let out = temp.as_file().try_clone().map_err(failed)?;
        let (tell, state) = tokio::sync::watch::channel(Compressing::default());
        let pace = Arc::new(AtomicU64::new(0));
        let (tar, mtime, head) = (packed.lazy_tar(), packed.files_mtime, prefix.clone());
        let paced = pace.clone();
        tokio::task::spawn_blocking(move || {
            // A directory's tar goes from its files straight into the compressor: the first
            // frame leaves before the last file is read.
            let mut why = None;
            let mut source = |sink: &mut dyn std::io::Write| {
                tar.write_to(sink).map_err(|e| {
                    why = Some(e.clone());
                    std::io::Error::other(e)
                })
            };
            let made = crate::artifact::compress_framed(
                &mut source,
                &head,
                codec,
                out,
                mtime,
                Some(&paced),
                &mut |written| tell.send_modify(|s| s.written = written),
            );
            let made = made.map_err(|e| why.take().unwrap_or_else(|| failed(e)));
            tell.send_modify(|s| s.done = Some(made));
        });
        Ok(Arc::new(Whole {
            file: temp.into_temp_path(),
            codec,
            prefix,
            state,
            pace,
        }))
    }

    /// The upload's size once compressed.
    fn size(&self) -> Option<u64> {
        match &self.state.borrow().done {
            Some(Ok((_, size))) => Some(self.prefix.len() as u64 + size),
            _ => None,
        }
    }

    /// The upload's sha256 once compressed, or why compressing failed.
    async fn outcome(&self) -> Result<String, String> {
        let mut state = self.state.clone();
        let done = state
            .wait_for(|s| s.done.is_some())
            .await
            .map_err(|_| "compressing the artifact stopped".to_owned())?;
        match done.done.clone().expect("waited for") {
            Ok((sha256, _)) => Ok(sha256),
            Err(e) => Err(e),
        }
    }

    /// The stream an upload sends: the prefix, then the file as it is written. It ends
    /// early (the host then fails to decompress) if compressing fails.
    fn follow(self: &Arc<Whole>) -> impl AsyncRead + Send + Unpin + 'static {
        use tokio::io::AsyncWriteExt;
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let whole = self.clone();
        tokio::spawn(async move {
            if tx.write_all(&whole.prefix).await.is_err() {
                return;
            }
            let Ok(mut file) = tokio::fs::File::open(&*whole.file).await else {
                return;
            };
            let mut state = whole.state.clone();
            let mut buf = vec![0u8; 256 * 1024];
            let mut pos = 0u64;
            loop {
                let (written, done) = {
                    let s = state.borrow_and_update();
                    (s.written, s.done.clone())
                };
                if let Some(Err(_)) = done {
                    return;
                }
                while pos < written {
                    let want = usize::try_from(written - pos)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    match file.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            pos += n as u64;
                            whole.pace.fetch_max(pos, Ordering::Relaxed);
                        }
                    }
                }
                if done.is_some() {
                    let _ = tx.shutdown().await;
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// Streams the whole artifact into `releases/<id>.partial` while it is compressed, then
/// has the host check the digest of what it received and finish the release.
async fn upload(
    ctx: &Ctx<'_>,
    c: &Conn<'_>,
    step: &str,
    finish: Cmd,
    whole: &Arc<Whole>,
) -> Result<u64, RemoteError> {
    let host = c.host.name.as_str();
    let deploy_to = &ctx.inventory.app.deploy_to;
    let receive = commands::release::receive(
        deploy_to,
        ctx.release,
        "",
        whole.codec.decompress_cmd(),
        whole.prefix.len() as u64,
    );
    // Known once compressed; until then, the tar's size stands in (progress, timeout).
    let total = whole
        .size()
        .unwrap_or(whole.prefix.len() as u64 + ctx.artifact.map_or(0, |a| a.tar_size));
    let (result, sent) = stream(ctx, c, &receive, Box::new(whole.follow()), total, false).await;
    if !matches!(&result, Ok(o) if o.success()) {
        // A stream cut short by a failed compression: that failure is the cause, and
        // what arrived is removed (`tar` may have taken the shorter archive).
        let failed = whole.state.borrow().done.clone();
        if let Some(Err(e)) = failed {
            let clean = commands::release::verify_received(deploy_to, ctx.release, "");
            let req = ExecRequest::new(&clean, timeout::SHORT);
            let _ = execute::output(c, step, "removing the partial release", req).await;
            return Err(RemoteError::new(host, step, e));
        }
        return Err(RemoteError::from_result(
            host,
            step,
            "extracting the release",
            &result,
        ));
    }
    let sha256 = whole
        .outcome()
        .await
        .map_err(|e| RemoteError::new(host, step, e))?;
    let cmd = Cmd::seq([
        commands::release::verify_received(deploy_to, ctx.release, &sha256),
        finish,
    ]);
    let what = "finishing the release";
    let o = execute::output(c, step, what, ExecRequest::new(&cmd, timeout::COPY)).await?;
    match o.exit {
        _ if o.success() => Ok(sent),
        crate::transport::Exit::Code(exit::SHA_MISMATCH) => Err(RemoteError::from_output(
            host, step, what, &o,
        )
        .saying(format!(
            "the artifact arrived damaged (sha256 differs after {sent} bytes); nothing was kept"
        ))),
        _ => Err(RemoteError::from_output(host, step, what, &o)),
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
