//! Compression for a whole upload: the [`Codec`] (zstd, or gzip for hosts without `zstd`),
//! what the host runs to undo it, and [`compress`], which writes the packed tar compressed
//! with the manifest ahead of it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use tempfile::TempPath;

use super::ArtifactError;
use super::manifest::Manifest;
use super::pack::{BUF_SIZE, Hashing, Restamp, new_temp};
use crate::shell::Cmd;

/// How the packed file is compressed (the host runs the matching decompressor).
/// zstd is the first choice: it decompresses several times faster than gzip, and the
/// hosts' CPU is what a fleet deploy spends; gzip is for hosts without `zstd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Gzip,
}

impl Codec {
    /// Compresses a small buffer (the manifest sent ahead of the artifact).
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Codec::Zstd => zstd::stream::encode_all(data, ZSTD_LEVEL),
            Codec::Gzip => {
                let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
                gzip.write_all(data)?;
                gzip.finish()
            }
        }
    }

    /// Decompresses a small buffer compressed by the host's tool.
    pub fn decompress_bytes(self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Codec::Zstd => {
                zstd::stream::read::Decoder::new(data)?.read_to_end(&mut out)?;
            }
            Codec::Gzip => {
                MultiGzDecoder::new(data).read_to_end(&mut out)?;
            }
        }
        Ok(out)
    }

    /// The host's command that decompresses stdin to stdout.
    pub fn decompress_cmd(self) -> Cmd {
        match self {
            Codec::Zstd => Cmd::new("zstd").arg("-dc"),
            Codec::Gzip => Cmd::new("gzip").arg("-dc"),
        }
    }

    /// The host's command that compresses stdin to stdout (quietly: its stderr is only for
    /// errors).
    pub fn compress_cmd(self) -> Cmd {
        match self {
            Codec::Zstd => Cmd::new("zstd").arg("-q").arg("-c"),
            Codec::Gzip => Cmd::new("gzip").arg("-c"),
        }
    }
}

/// zstd's level: its default, compressing about as tightly as `gzip -6` at several times
/// the speed.
pub(super) const ZSTD_LEVEL: i32 = 3;

/// The artifact compressed for a whole upload: the manifest, then the tar.
#[derive(Debug)]
pub struct Compressed {
    /// The compressed tar; deleted on drop.
    pub file: TempPath,
    pub codec: Codec,
    /// Size of `file` in bytes.
    pub compressed_size: u64,
    /// The manifest compressed with `codec`: sent ahead of `file` (empty without one).
    pub prefix: Vec<u8>,
    /// sha256 of `prefix` followed by `file`: what the host checks the bytes it received
    /// against.
    pub upload_sha256: String,
}

impl Compressed {
    /// Bytes a whole upload sends: the manifest and the compressed tar.
    pub fn upload_size(&self) -> u64 {
        self.prefix.len() as u64 + self.compressed_size
    }
}

/// Compresses the packed tar for a whole upload with `codec` (zstd; gzip for hosts that
/// have no `zstd`), with the manifest to send ahead of it; with `mtime`, every entry carries
/// that modification time instead of the tar's ([`Packed::files_mtime`](super::Packed)).
/// At zstd's default level throughout. Blocking.
pub fn compress(
    tar: &Path,
    manifest: Option<&Manifest>,
    codec: Codec,
    temp_dir: &Path,
    mtime: Option<u64>,
) -> Result<Compressed, ArtifactError> {
    let write_err = |source| ArtifactError::Write {
        dir: temp_dir.to_owned(),
        source,
    };
    let prefix = prefix(manifest, codec).map_err(write_err)?;
    let temp = new_temp(temp_dir)?;
    let file = temp.as_file().try_clone().map_err(write_err)?;
    let mut tar = BufReader::with_capacity(BUF_SIZE, File::open(tar).map_err(write_err)?);
    let mut source = |out: &mut dyn Write| io::copy(&mut tar, out).map(drop);
    let (upload_sha256, compressed_size) =
        compress_framed(&mut source, &prefix, codec, file, mtime, None, &mut |_| {})
            .map_err(write_err)?;
    Ok(Compressed {
        file: temp.into_temp_path(),
        codec,
        compressed_size,
        prefix,
        upload_sha256,
    })
}

/// The manifest compressed with `codec`, sent ahead of the tar (empty without one).
pub fn prefix(manifest: Option<&Manifest>, codec: Codec) -> io::Result<Vec<u8>> {
    match manifest {
        Some(manifest) => codec.compress(&manifest.render()),
        None => Ok(Vec::new()),
    }
}

/// Tar bytes per compressed frame: each frame is flushed to the file as it ends, so uploads
/// can send it while the next is compressed, and each can have its own zstd level.
const FRAME: usize = 2 * 1024 * 1024;

/// The strongest zstd level the pace may choose. Measured on this project's machine (13.7
/// MB of mixed text and random bytes): level 9 makes 0.6% fewer bytes than level 3 at
/// ~80 MB/s; level 12 only 0.05% fewer than 9, at 3 MB/s — slower than a 50 Mbit/s link.
const MAX_LEVEL: i32 = 9;

/// The weakest: zstd's default, which already sends fewer bytes than `gzip -6` (the
/// floor a prebuilt `.tar.gz` sets: 9.49 MB against 9.85 MB on the sample above, where
/// level 1 makes 9.90 MB) at several times its speed.
const MIN_LEVEL: i32 = ZSTD_LEVEL;

/// Compresses the tar `source` writes into `out` as a series of frames (zstd frames, or gzip members: both
/// tools decompress a series as one stream), calling `written` with the file's size after
/// each. With `pace` (how far the fastest upload has read the file), each zstd frame's level
/// follows the link: while the uploads lag behind the compressor by several frames, the
/// link is the limit and a stronger level sends fewer bytes for CPU that would otherwise
/// wait; while they wait for the compressor, back down to zstd's default. Without it,
/// zstd's default level. Gives the sha256 of `prefix` and the file, and the file's size. Blocking.
pub fn compress_framed(
    source: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    prefix: &[u8],
    codec: Codec,
    out: File,
    mtime: Option<u64>,
    pace: Option<&AtomicU64>,
    written: &mut dyn FnMut(u64),
) -> io::Result<(String, u64)> {
    // The upload's digest is taken as the compressed bytes are written.
    let sink = Hashing::with_prefix(BufWriter::with_capacity(BUF_SIZE, out), prefix);
    let mut frames = Frames {
        codec,
        open: None,
        sink: Some(sink),
        in_frame: 0,
        level: ZSTD_LEVEL,
        frames: 0,
        pace,
        written,
    };
    match mtime {
        None => source(&mut frames)?,
        Some(mtime) => {
            let mut stamped = Restamp::new(&mut frames, mtime);
            source(&mut stamped)?;
            stamped.finish()?;
        }
    }
    let (mut file, sha256, size) = frames.finish()?.finish();
    file.flush()?;
    Ok((sha256, size))
}

type Sink = Hashing<BufWriter<File>>;

enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
    Gzip(GzEncoder<Sink>),
}

/// A writer that compresses what it is given in frames of [`FRAME`] input bytes.
struct Frames<'a> {
    codec: Codec,
    open: Option<Encoder>,
    sink: Option<Sink>,
    in_frame: usize,
    level: i32,
    frames: u64,
    pace: Option<&'a AtomicU64>,
    written: &'a mut dyn FnMut(u64),
}

impl Frames<'_> {
    fn start(&mut self) -> io::Result<&mut Encoder> {
        if self.open.is_none() {
            let sink = self.sink.take().expect("a sink when no frame is open");
            self.open = Some(match self.codec {
                Codec::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(sink, self.level)?),
                Codec::Gzip => Encoder::Gzip(GzEncoder::new(sink, Compression::fast())),
            });
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    /// Ends the open frame, flushes it to the file and picks the next frame's level.
    fn end_frame(&mut self) -> io::Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let mut sink = match open {
            Encoder::Zstd(zstd) => zstd.finish()?,
            Encoder::Gzip(gzip) => gzip.finish()?,
        };
        sink.flush()?;
        let size = sink.count();
        self.sink = Some(sink);
        self.in_frame = 0;
        self.frames += 1;
        (self.written)(size);
        if let Some(pace) = self.pace {
            let read = pace.load(Ordering::Relaxed).min(size);
            let frame = size / self.frames;
            let behind = (size - read) / frame.max(1);
            if behind >= 3 {
                self.level = (self.level + 1).min(MAX_LEVEL);
            } else if behind < 1 {
                self.level = (self.level - 1).max(MIN_LEVEL);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<Sink> {
        self.end_frame()?;
        Ok(self.sink.take().expect("no frame open"))
    }
}

impl Write for Frames<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(FRAME - self.in_frame);
        match self.start()? {
            Encoder::Zstd(zstd) => zstd.write_all(&buf[..n])?,
            Encoder::Gzip(gzip) => gzip.write_all(&buf[..n])?,
        }
        self.in_frame += n;
        if self.in_frame == FRAME {
            self.end_frame()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
