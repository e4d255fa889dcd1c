//! Shards: Arrow IPC files (uncompressed, so `pyarrow.ipc.open_file` and a memory map
//! both read them as they are).

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use infercache_artifact::{Blob, Digest};

use crate::DatasetError;

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

/// The record batches of a shard, decoded in place from a memory map of its blob: the
/// arrays point into the mapping (no copy), which lives as long as any of them.
pub(crate) fn decode_mapped(blob: &Blob) -> Result<Vec<RecordBatch>, DatasetError> {
    let map = blob.map()?;
    let buffer = Buffer::from(bytes::Bytes::from_owner(map));
    decode(&buffer, &format!("shard {}", blob.digest()))
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

/// The record batches of an Arrow IPC file held in `buffer`.
pub(crate) fn decode(buffer: &Buffer, what: &str) -> Result<Vec<RecordBatch>, DatasetError> {
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
}
