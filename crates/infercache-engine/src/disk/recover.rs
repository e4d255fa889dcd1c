//! Start-up recovery: the index rebuilt from the segment files.

use super::*;

impl DiskTier {
    /// Rebuilds the index from the segment files' headers.
    pub(super) fn recover(&self) -> Result<(), DiskError> {
        let now = self.clock.now_ms();
        let mut writer = self.writer.lock();
        let mut state = self.state.write();
        let State {
            index,
            segments,
            bytes,
        } = &mut *state;
        let found = segment::list(&self.segments_dir)?;
        // Only the newest segment holding records can have a torn tail from a crash.
        let newest = found
            .iter()
            .rev()
            .find(|(_, path)| fs::metadata(path).is_ok_and(|m| m.len() > 0))
            .map(|(seq, _)| *seq);
        // The latest place where a record was damaged (not a torn tail). The damaged record
        // may have replaced or removed any older value, so nothing indexed before it is
        // trusted.
        let mut damage: Option<(u64, u64)> = None;
        for (seq, path) in found {
            writer.next_seq = writer.next_seq.max(seq + 1);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let mut len = file.metadata().map_err(io_err(&path))?.len();
            if len == 0 {
                // An active segment that never got a record; ours by its name.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let mut keys = Vec::new();
            let mut start = 0;
            loop {
                let end = segment::scan(&file, &path, len, start, |offset, h| {
                    if h.tombstone || (h.expires_ms != 0 && h.expires_ms <= now) {
                        index.remove(&h.key);
                    } else {
                        let loc = Loc {
                            seq,
                            offset,
                            len: h.record_len(),
                            created_ms: h.created_ms,
                            expires_ms: h.expires_ms,
                        };
                        index.insert(h.key, loc);
                        keys.push(h.key);
                    }
                })?;
                let segment::ScanEnd::Corrupt { offset, reason } = end else {
                    break;
                };
                self.counters.corrupt.incr();
                match segment::resync(&file, &path, len, offset)? {
                    Some(next) => {
                        tracing::warn!(segment = %path.display(), offset, reason, "disk tier: damaged record skipped; older entries dropped");
                        damage = damage.max(Some((seq, offset)));
                        start = next;
                    }
                    None if Some(seq) == newest => {
                        // A torn tail from a crash: cut it off so it is not met again.
                        tracing::warn!(segment = %path.display(), offset, reason, "disk tier: torn tail cut off");
                        file.set_len(offset).map_err(io_err(&path))?;
                        len = offset;
                        break;
                    }
                    None => {
                        tracing::warn!(segment = %path.display(), offset, reason, "disk tier: damaged segment tail; older entries dropped");
                        damage = damage.max(Some((seq, offset)));
                        break;
                    }
                }
            }
            segments.insert(
                seq,
                Segment {
                    file: Arc::new(file),
                    len,
                    keys,
                },
            );
            *bytes += len;
        }
        if let Some(point) = damage {
            index.retain(|_, loc| (loc.seq, loc.offset) > point);
        }
        drop(state);
        // A smaller capacity than the store was written with: shed the oldest segments now.
        while self.state.read().bytes > self.capacity {
            self.evict_oldest(&mut writer)?;
        }
        tracing::debug!(
            dir = %self.dir.display(),
            entries = self.entries(),
            bytes = self.bytes(),
            "disk tier recovered"
        );
        Ok(())
    }
}
