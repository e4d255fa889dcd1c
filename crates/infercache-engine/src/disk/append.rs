//! Appending records to the active segment, rolling segments, and evicting the oldest
//! one when the tier is over its capacity or the file system is full.

use super::*;

impl DiskTier {
    /// [`DiskTier::append`], and when the file system is full, evicts the oldest segment
    /// and tries once more (a cache would rather lose old entries than stop writing).
    pub(super) fn append_with_room(
        &self,
        writer: &mut Writer,
        key: Digest,
        rec: &[u8],
        tombstone: bool,
        created_ms: u64,
        expires_ms: u64,
    ) -> Result<(), DiskError> {
        let now = self.clock.now_ms();
        if !self.health.admit(now) {
            self.counters.write_errors.incr();
            return Err(DiskError::Degraded);
        }
        let mut result = self.append(writer, key, rec, tombstone, created_ms, expires_ms);
        let full = matches!(&result, Err(DiskError::Io { source, .. }) if source.kind() == ErrorKind::StorageFull);
        if full && self.evict_oldest(writer).unwrap_or(false) {
            result = self.append(writer, key, rec, tombstone, created_ms, expires_ms);
        }
        match &result {
            Ok(()) => self.health.answered(),
            Err(DiskError::Io { source, .. }) => self.health.failed(now, source),
            Err(_) => {}
        }
        result
    }

    /// Appends one encoded record and points the index at it (or, for a tombstone, drops
    /// the key). Counts a failure as a write error.
    pub(super) fn append(
        &self,
        writer: &mut Writer,
        key: Digest,
        rec: &[u8],
        tombstone: bool,
        created_ms: u64,
        expires_ms: u64,
    ) -> Result<(), DiskError> {
        let result = self.append_inner(writer, key, rec, tombstone, created_ms, expires_ms);
        if result.is_err() {
            self.counters.write_errors.incr();
        }
        result
    }

    pub(super) fn append_inner(
        &self,
        writer: &mut Writer,
        key: Digest,
        rec: &[u8],
        tombstone: bool,
        created_ms: u64,
        expires_ms: u64,
    ) -> Result<(), DiskError> {
        let rec_len = u64::try_from(rec.len()).expect("bug: record length fits u64");
        let fits = writer
            .active
            .as_ref()
            .is_some_and(|a| a.offset + rec_len <= self.segment_size);
        if !fits {
            self.roll(writer)?;
        }
        let (seq, offset, file) = {
            let active = writer
                .active
                .as_ref()
                .expect("bug: roll leaves an active segment");
            (active.seq, active.offset, Arc::clone(&active.file))
        };
        if let Err(e) = health::seam(&self.dir).and_then(|()| file.write_all_at(rec, offset)) {
            self.after_failed_write(writer, offset + rec_len);
            return Err(io_err(&self.segment_path(seq))(e));
        }
        let end = offset + rec_len;
        if let Some(active) = writer.active.as_mut() {
            active.offset = end;
        }
        let mut state = self.state.write();
        let segment = state
            .segments
            .get_mut(&seq)
            .expect("bug: the active segment is registered");
        segment.len = end;
        if !tombstone {
            segment.keys.push(key);
        }
        state.bytes += rec_len;
        if tombstone {
            state.index.remove(&key);
        } else {
            let loc = Loc {
                seq,
                offset,
                len: rec_len,
                created_ms,
                expires_ms,
            };
            state.index.insert(key, loc);
        }
        Ok(())
    }

    /// A write failed part-way: cut the partial record off, or if even that fails, stop
    /// writing to this segment (its tail is then damaged and recovery stops there).
    pub(super) fn after_failed_write(&self, writer: &mut Writer, written_up_to: u64) {
        let Some(active) = writer.active.as_ref() else {
            return;
        };
        if active.file.set_len(active.offset).is_ok() {
            return;
        }
        let len = active
            .file
            .metadata()
            .map_or(written_up_to, |m| m.len())
            .min(self.segment_size);
        let seq = active.seq;
        writer.active = None;
        let mut state = self.state.write();
        let state = &mut *state;
        if let Some(segment) = state.segments.get_mut(&seq) {
            state.bytes = state.bytes - segment.len + len;
            segment.len = len;
        }
    }

    /// Seals the active segment and starts a new one, evicting the oldest segments until
    /// a full new segment fits in the capacity.
    pub(super) fn roll(&self, writer: &mut Writer) -> Result<(), DiskError> {
        if let Some(old) = writer.active.take() {
            if old.offset == 0 {
                let path = self.segment_path(old.seq);
                let mut state = self.state.write();
                state.segments.remove(&old.seq);
                drop(state);
                fs::remove_file(&path).map_err(io_err(&path))?;
            } else if let Err(e) = old.file.sync_data() {
                tracing::warn!(segment = old.seq, error = %e, "disk tier: fsync of a sealed segment failed");
            }
        }
        while self.state.read().bytes + self.segment_size > self.capacity {
            if !self.evict_oldest(writer)? {
                break;
            }
        }
        let seq = writer.next_seq;
        writer.next_seq += 1;
        let path = self.segment_path(seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = manifest::sync_dir(&self.segments_dir) {
            tracing::warn!(error = %e, "disk tier: fsync of the segments directory failed");
        }
        let file = Arc::new(file);
        self.state.write().segments.insert(
            seq,
            Segment {
                file: Arc::clone(&file),
                len: 0,
                keys: Vec::new(),
            },
        );
        writer.active = Some(Active {
            seq,
            file,
            offset: 0,
        });
        Ok(())
    }

    /// Deletes the oldest segment; `false` if there is none. Needs the writer lock.
    pub(super) fn evict_oldest(&self, writer: &mut Writer) -> Result<bool, DiskError> {
        let (seq, segment, evicted) = {
            let mut state = self.state.write();
            let Some((seq, segment)) = state.segments.pop_first() else {
                return Ok(false);
            };
            state.bytes -= segment.len;
            let mut evicted = 0;
            for key in &segment.keys {
                if state.index.get(key).is_some_and(|loc| loc.seq == seq) {
                    state.index.remove(key);
                    evicted += 1;
                }
            }
            (seq, segment, evicted)
        };
        self.counters.evictions.add(evicted);
        if writer.active.as_ref().is_some_and(|a| a.seq == seq) {
            writer.active = None;
        }
        let path = self.segment_path(seq);
        if let Err(e) = fs::remove_file(&path) {
            // Keep accounting for the file; its entries are gone from the index already.
            let mut state = self.state.write();
            state.bytes += segment.len;
            state.segments.insert(
                seq,
                Segment {
                    keys: Vec::new(),
                    ..segment
                },
            );
            return Err(io_err(&path)(e));
        }
        Ok(true)
    }
}
