//! Compression for a whole upload: the [`Codec`] (zstd, or gzip for hosts without `zstd`),
//! what the host runs to undo it, and [`compress`], which writes the packed tar compressed
//! with the manifest ahead of it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

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

/// Copies the tar `source` into `sink`, restamped with `mtime` when given.
fn copy(source: &mut impl Read, sink: &mut impl Write, mtime: Option<u64>) -> io::Result<()> {
    match mtime {
        None => io::copy(source, sink).map(drop),
        Some(mtime) => {
            let mut stamped = Restamp::new(sink, mtime);
            io::copy(source, &mut stamped)?;
            stamped.finish().map(drop)
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
/// Blocking.
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
    let prefix = match manifest {
        Some(manifest) => codec.compress(&manifest.render()).map_err(write_err)?,
        None => Vec::new(),
    };
    let temp = new_temp(temp_dir)?;
    let mut source = BufReader::with_capacity(BUF_SIZE, File::open(tar).map_err(write_err)?);
    // The upload's digest is taken as the compressed bytes are written.
    let sink = Hashing::with_prefix(BufWriter::with_capacity(BUF_SIZE, temp.as_file()), &prefix);
    let written = match codec {
        Codec::Zstd => zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL).and_then(|mut zstd| {
            copy(&mut source, &mut zstd, mtime)?;
            zstd.finish()
        }),
        Codec::Gzip => {
            let mut gzip = GzEncoder::new(sink, Compression::fast());
            copy(&mut source, &mut gzip, mtime).and_then(|_| gzip.finish())
        }
    };
    let (mut file, upload_sha256, compressed_size) = written.map_err(write_err)?.finish();
    file.flush().map_err(write_err)?;
    drop(file);
    Ok(Compressed {
        file: temp.into_temp_path(),
        codec,
        compressed_size,
        prefix,
        upload_sha256,
    })
}
