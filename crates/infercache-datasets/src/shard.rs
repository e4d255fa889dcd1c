//! Shards: Arrow IPC files (uncompressed, so `pyarrow.ipc.open_file` and a memory map
//! both read them as they are).
//!
//! **Validation once per shard.** Decoding an IPC file with Arrow's full validation (every
//! string's UTF-8, every offset) costs about as much as reading its bytes, and a stream
//! decodes every shard it reads. A shard is therefore validated in full the first time
//! this cache decodes it, and its content digest remembered ([`Validated`]); later
//! decodes of bytes with that digest skip Arrow's validation. That is sound because of
//! what the digest proves: the bytes passed to [`decode_shard`] are ones the store has
//! just verified to hash to the digest (BLAKE3), so they are the very bytes that passed
//! the full validation, and Arrow's decode of the same bytes is the same. Nothing is
//! remembered across processes: a digest is trusted only after this process validated
//! those bytes itself.

use std::collections::HashSet;
use std::sync::Mutex;

use arrow_array::RecordBatch;
use arrow_buffer::{Buffer, MutableBuffer};
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use infercache_artifact::{Blob, Digest};

use crate::DatasetError;
use crate::error::io_err;

/// One shard as an Arrow IPC file: one record batch.
pub(crate) fn encode(rows: &RecordBatch) -> Result<Vec<u8>, DatasetError> {
    let mut out = Vec::new();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(&mut out, rows.schema().as_ref())
        .map_err(|e| DatasetError::arrow("writing a shard", e))?;
    writer
        .write(rows)
        .and_then(|()| writer.finish())
        .map_err(|e| DatasetError::arrow("writing a shard", e))?;
    drop(writer);
    Ok(out)
}

/// The record batches of a shard's blob, read as [`read`] reads it and fully validated.
pub(crate) fn decode_blob(blob: &Blob, use_mmap: bool) -> Result<Vec<RecordBatch>, DatasetError> {
    decode(&read(blob, use_mmap)?, &format!("shard {}", blob.digest()))
}

/// A blob's bytes as a buffer: with `use_mmap`, over its memory map (arrays decoded from
/// it point into the mapping, no copy, and it lives as long as any of them), every page
/// mapped at once ([`Blob::map_populated`]: a stream's producer pays the page faults, not
/// its reader, which would otherwise take one per 64 KiB it reads); otherwise
/// read with plain reads into a buffer of its own (64-byte aligned, as Arrow's are, so
/// decoding copies nothing more).
pub(crate) fn read(blob: &Blob, use_mmap: bool) -> Result<Buffer, DatasetError> {
    if use_mmap {
        return Ok(Buffer::from(bytes::Bytes::from_owner(
            blob.map_populated()?,
        )));
    }
    let len = usize::try_from(blob.len()).map_err(|_| {
        DatasetError::io(
            blob.path(),
            std::io::Error::other("the shard is larger than this machine's address space"),
        )
    })?;
    let mut buffer = MutableBuffer::from_len_zeroed(len);
    std::os::unix::fs::FileExt::read_exact_at(blob.file(), buffer.as_slice_mut(), 0)
        .map_err(io_err(blob.path()))?;
    Ok(buffer.into())
}

/// Digests this cache has decoded with Arrow's full validation (see the
/// [module docs](self)), at most [`Validated::MAX`] of them (about 3 MB): when full, it
/// starts over, and shards are validated again as they are next decoded.
#[derive(Debug, Default)]
pub(crate) struct Validated {
    digests: Mutex<HashSet<Digest>>,
}

impl Validated {
    const MAX: usize = 1 << 16;

    fn digests(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.digests
            .lock()
            .expect("validated digests lock poisoned")
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.digests().contains(digest)
    }

    fn insert(&self, digest: Digest) {
        let mut digests = self.digests();
        if digests.len() >= Self::MAX {
            digests.clear();
        }
        digests.insert(digest);
    }
}

/// How [`decode_shard`] decoded a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// With Arrow's full validation (the first decode of this digest here).
    Validated,
    /// Without it: bytes of this digest passed it before.
    Trusted,
}

/// The record batches of the shard `digest`, whose bytes `buffer` holds, validated in full
/// unless this digest was before (see the [module docs](self)).
///
/// The caller guarantees that `buffer` holds bytes verified to hash to `digest`: a blob
/// of [`Store::open_verified`](infercache_artifact::Store::open_verified), mapped or read
/// while it was open. Every caller in this crate passes such a blob's bytes.
pub(crate) fn decode_shard(
    digest: Digest,
    buffer: &Buffer,
    validated: &Validated,
) -> Result<(Vec<RecordBatch>, Decoded), DatasetError> {
    let what = format!("shard {digest}");
    if validated.contains(&digest) {
        return Ok((decode_with(buffer, &what, true)?, Decoded::Trusted));
    }
    let batches = decode(buffer, &what)?;
    validated.insert(digest);
    Ok((batches, Decoded::Validated))
}

/// A shard's rows as one record batch: the one it holds (shards are written with one), or
/// its batches concatenated.
pub(crate) fn one_batch(
    mut batches: Vec<RecordBatch>,
    digest: &Digest,
) -> Result<RecordBatch, DatasetError> {
    if batches.len() == 1 {
        return Ok(batches.pop().expect("one batch"));
    }
    let what = || format!("shard {digest}");
    let schema = batches.first().map(RecordBatch::schema).ok_or_else(|| {
        DatasetError::arrow(
            what(),
            arrow_schema::ArrowError::IpcError("the shard holds no record batch".to_owned()),
        )
    })?;
    arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| DatasetError::arrow(what(), e))
}

/// The record batches of an Arrow IPC file held in `buffer`, with Arrow's full validation.
pub(crate) fn decode(buffer: &Buffer, what: &str) -> Result<Vec<RecordBatch>, DatasetError> {
    decode_with(buffer, what, false)
}

/// The record batches of an Arrow IPC file held in `buffer`; `trusted` skips Arrow's
/// validation of the arrays, and is only passed by [`decode_shard`] for bytes of a digest
/// that passed it. The footer and every block's bounds are checked either way.
fn decode_with(
    buffer: &Buffer,
    what: &str,
    trusted: bool,
) -> Result<Vec<RecordBatch>, DatasetError> {
    let bad = |reason: String| {
        DatasetError::arrow(what.to_owned(), arrow_schema::ArrowError::IpcError(reason))
    };
    if buffer.len() < 10 {
        return Err(bad("too short for an Arrow IPC file".to_owned()));
    }
    let trailer_start = buffer.len() - 10;
    let trailer: [u8; 10] = buffer[trailer_start..]
        .try_into()
        .expect("ten bytes were sliced");
    let footer_len =
        read_footer_length(trailer).map_err(|e| DatasetError::arrow(what.to_owned(), e))?;
    let footer_start = trailer_start
        .checked_sub(footer_len)
        .ok_or_else(|| bad("footer length past the start of the file".to_owned()))?;
    let footer = arrow_ipc::root_as_footer(&buffer[footer_start..trailer_start])
        .map_err(|e| bad(format!("unreadable footer: {e}")))?;
    let schema = footer
        .schema()
        .ok_or_else(|| bad("no schema in the footer".to_owned()))?;
    let schema = std::sync::Arc::new(
        try_fb_to_schema(schema).map_err(|e| DatasetError::arrow(what.to_owned(), e))?,
    );
    let mut decoder = FileDecoder::new(schema, footer.version());
    if trusted {
        // SAFETY: `trusted` is set only by `decode_shard`, for bytes verified to hash to a
        // digest whose bytes this process decoded with Arrow's full validation before:
        // the same bytes, so the same valid arrays (see the module docs). The bytes are
        // a verified blob's, which the store never writes to once stored.
        #[expect(
            unsafe_code,
            reason = "skipping Arrow's validation of bytes whose digest passed it"
        )]
        let trusted_decoder = unsafe { decoder.with_skip_validation(true) };
        decoder = trusted_decoder;
    }
    let block_of = |block: &arrow_ipc::Block| -> Result<Buffer, DatasetError> {
        let offset =
            usize::try_from(block.offset()).map_err(|_| bad("negative block offset".to_owned()))?;
        let len = usize::try_from(block.metaDataLength())
            .ok()
            .zip(usize::try_from(block.bodyLength()).ok())
            .map(|(m, b)| m + b)
            .ok_or_else(|| bad("negative block length".to_owned()))?;
        if offset.checked_add(len).is_none_or(|end| end > buffer.len()) {
            return Err(bad("a block runs past the end of the file".to_owned()));
        }
        Ok(buffer.slice_with_length(offset, len))
    };
    for block in footer.dictionaries().iter().flatten() {
        let data = block_of(block)?;
        decoder
            .read_dictionary(block, &data)
            .map_err(|e| DatasetError::arrow(what.to_owned(), e))?;
    }
    let mut out = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        let data = block_of(block)?;
        if let Some(batch) = decoder
            .read_record_batch(block, &data)
            .map_err(|e| DatasetError::arrow(what.to_owned(), e))?
        {
            out.push(batch);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn encode_then_decode() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            (
                "text",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as _,
            ),
        ])
        .unwrap();
        let bytes = encode(&batch).unwrap();
        let back = decode(&Buffer::from(bytes.clone()), "test").unwrap();
        assert_eq!(back, [batch]);
        assert!(decode(&Buffer::from(bytes[..bytes.len() - 3].to_vec()), "test").is_err());
    }

    fn shard_of(text: &str) -> (RecordBatch, Vec<u8>) {
        let batch = RecordBatch::try_from_iter([(
            "text",
            Arc::new(StringArray::from(vec![text, "plain"])) as _,
        )])
        .unwrap();
        let bytes = encode(&batch).unwrap();
        (batch, bytes)
    }

    #[test]
    fn a_shard_is_validated_the_first_time_and_trusted_after() {
        let validated = Validated::default();
        let (batch, bytes) = shard_of("zqzqzq");
        let digest = Digest::blake3_of(&bytes);
        let buffer = Buffer::from(bytes);
        let (first, how) = decode_shard(digest, &buffer, &validated).unwrap();
        assert_eq!(
            (first.as_slice(), how),
            ([batch.clone()].as_slice(), Decoded::Validated)
        );
        let (again, how) = decode_shard(digest, &buffer, &validated).unwrap();
        assert_eq!(
            (again.as_slice(), how),
            ([batch].as_slice(), Decoded::Trusted)
        );
    }

    #[test]
    fn bytes_that_fail_validation_are_refused_and_never_trusted() {
        let validated = Validated::default();
        let (_, mut bytes) = shard_of("zqzqzq");
        let at = bytes
            .windows(6)
            .position(|w| w == b"zqzqzq")
            .expect("the value is in the file");
        // Not UTF-8: only Arrow's validation can tell (the file's structure is intact).
        bytes[at + 2] = 0xFF;
        let digest = Digest::blake3_of(&bytes);
        let buffer = Buffer::from(bytes);
        for _ in 0..2 {
            let err = decode_shard(digest, &buffer, &validated).unwrap_err();
            assert!(
                err.to_string().contains("utf-8") || err.to_string().contains("UTF8"),
                "{err}"
            );
        }
        assert!(!validated.contains(&digest));
    }

    #[test]
    fn the_memory_of_validated_digests_is_bounded() {
        let validated = Validated::default();
        for n in 0..=Validated::MAX {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(n as u64).to_le_bytes());
            validated.insert(Digest::Blake3(d));
        }
        assert!(validated.digests().len() <= Validated::MAX);
    }
}
