//! Vectors kept as JSON text for hot entries, float arrays and base64 strings, so that a
//! hit on an embedding copies its text instead of formatting every float (or encoding
//! every byte) again.
//!
//! Formatting 384 floats is most of the CPU a float hit costs (the profile in
//! BENCHMARKS.md, "Cache hits with float arrays kept rendered"), and base64 of the same
//! vector about a sixth of a base64 hit's instructions ("Instructions per hit").
//! [`RenderedVectors`] keeps the text of recently served vectors in a small direct-mapped
//! table: one slot per key's hash and [`Form`], each holding the key, the form, the
//! stored vector bytes and their text. It changes no
//! rule of the cache: every request still looks its rows up through the engine, which
//! judges freshness, invalidation and fitness as before; the table only replaces the
//! formatting of the bytes the engine returned, and its text is used only when the slot's
//! form is the one asked for and its vector bytes are equal to them, so the text is
//! always what writing those bytes in that form gives (the text is a function of the
//! bytes and the form alone). An entry that was invalidated,
//! expired or replaced never reaches the table's text: the engine does not return it, or
//! returns other bytes.
//!
//! Bounded and charged: [`BUDGET`] bytes at most, [`SLOTS`] slots of an equal share each
//! (a vector whose bytes and text do not fit a share is formatted on every hit, never
//! kept), and the server's configuration takes the budget out of the memory tier's own
//! ([`budget_for`]). A slot pins its vector's stored bytes (a shared `Bytes`, no copy)
//! until the slot is reused, so its share counts them as well as the text.
//!
//! Written by hand, rather than with a cache crate: a fixed table of `try_lock`ed slots
//! never blocks a request (a slot another request holds is formatted around) and needs no
//! eviction policy of its own (a new key takes its slot).

use std::sync::Mutex;

use bytes::Bytes;
use infercache_core::Digest;

use super::write;

/// The bytes the table may hold at most.
pub(crate) const BUDGET: u64 = 512 << 10;

/// The table's slots: each may hold a vector's bytes and text up to `BUDGET / SLOTS`.
pub(crate) const SLOTS: usize = 64;

/// Memory-tier budgets below this keep no rendered text (the table would be a large
/// share of them); a server keeps the table only when its tier, the table's budget taken
/// out, still has this much, so a table is always charged.
pub(crate) const MIN_MEMORY: u64 = 64 * BUDGET;

/// Bytes a slot charges beyond its vector and text: each block's allocator rounding and
/// the shared header of the text's `Bytes`.
const SLOT_OVERHEAD: usize = 128;

/// The table's budget for a memory tier of `memory_bytes`: [`BUDGET`], taken out of the
/// tier's, when the tier has at least [`MIN_MEMORY`]; else none.
pub(crate) fn budget_for(memory_bytes: u64) -> u64 {
    if memory_bytes >= MIN_MEMORY {
        BUDGET
    } else {
        0
    }
}

/// How a vector is written into a JSON body (OpenAI's `encoding_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// A JSON array of its floats ([`write::f32_array`]).
    Floats,
    /// A JSON string of its little-endian bytes in base64 ([`write::base64_string`]).
    Base64,
}

impl Form {
    /// Writes `vector` in this form, no table involved.
    pub(crate) fn write(self, out: &mut Vec<u8>, vector: &[u8]) {
        match self {
            Self::Floats => write::f32_array(out, vector, None),
            Self::Base64 => write::base64_string(out, vector),
        }
    }
}

/// The table; see the module's documentation.
#[derive(Debug)]
pub(crate) struct RenderedVectors {
    slots: Box<[Mutex<Option<Slot>>]>,
}

#[derive(Debug)]
struct Slot {
    key: Digest,
    form: Form,
    vector: Bytes,
    text: Bytes,
}

impl RenderedVectors {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Appends `vector` (little-endian `f32`s) in `form` to `out`, byte for byte what
    /// [`Form::write`] writes: the kept text when the slot of `key` and `form` holds that
    /// form of the same vector bytes, else written, and then kept when it fits a slot and
    /// the slot is free to take.
    pub(crate) fn write(&self, out: &mut Vec<u8>, key: &Digest, vector: &Bytes, form: Form) {
        let slot = &self.slots[slot_of(key, form)];
        if let Ok(held) = slot.try_lock()
            && let Some(kept) = held.as_ref()
            && kept.key == *key
            && kept.form == form
            && kept.vector == *vector
        {
            out.extend_from_slice(&kept.text);
            return;
        }
        let start = out.len();
        form.write(out, vector);
        let text_len = out.len() - start;
        if vector.len() + text_len + SLOT_OVERHEAD > slot_bytes() {
            return;
        }
        let text = Bytes::copy_from_slice(&out[start..]);
        if let Ok(mut held) = slot.try_lock() {
            let old = held.replace(Slot {
                key: *key,
                form,
                vector: vector.clone(),
                text,
            });
            drop(held);
            drop(old);
        }
    }

    /// Bytes the table holds now, charged as a slot is (tests check the bound).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| {
                s.lock()
                    .ok()?
                    .as_ref()
                    .map(|k| k.vector.len() + k.text.len() + SLOT_OVERHEAD)
            })
            .sum()
    }
}

impl Default for RenderedVectors {
    fn default() -> Self {
        Self::new()
    }
}

/// Each slot's share of [`BUDGET`].
fn slot_bytes() -> usize {
    usize::try_from(BUDGET).expect("a small budget") / SLOTS
}

/// The slot of `key` in `form`: its first bytes (a BLAKE3 digest's, so spread evenly);
/// a key's two forms take neighbouring slots, so that a client of each keeps both.
fn slot_of(key: &Digest, form: Form) -> usize {
    let head = u64::from_le_bytes(key.0[..8].try_into().expect("a digest has 32 bytes"));
    let head = head.wrapping_add(u64::from(form == Form::Base64));
    usize::try_from(head % SLOTS as u64).expect("below SLOTS")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn digest(seed: u8) -> Digest {
        Digest([seed; 32])
    }

    fn formatted(vector: &[u8]) -> Vec<u8> {
        written(vector, Form::Floats)
    }

    fn written(vector: &[u8], form: Form) -> Vec<u8> {
        let mut out = Vec::new();
        form.write(&mut out, vector);
        out
    }

    /// Whether `key`'s slot holds `vector`'s text.
    fn holds(table: &RenderedVectors, key: &Digest, vector: &Bytes) -> bool {
        holds_form(table, key, vector, Form::Floats)
    }

    fn holds_form(table: &RenderedVectors, key: &Digest, vector: &Bytes, form: Form) -> bool {
        let held = table.slots[slot_of(key, form)]
            .lock()
            .expect("not poisoned");
        held.as_ref().is_some_and(|k| {
            k.key == *key
                && k.form == form
                && k.vector == *vector
                && k.text == written(vector, form)
        })
    }

    fn floats(xs: &[f32]) -> Bytes {
        xs.iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    }

    proptest! {
        #[test]
        fn kept_text_is_what_formatting_the_served_bytes_writes(
            xs in proptest::collection::vec(any::<f32>(), 0..64),
            ys in proptest::collection::vec(any::<f32>(), 0..64),
        ) {
            let table = RenderedVectors::new();
            let (a, b) = (floats(&xs), floats(&ys));
            let key = digest(7);
            for (v, form) in [
                (&a, Form::Floats), (&a, Form::Floats), (&a, Form::Base64), (&b, Form::Base64),
                (&b, Form::Floats), (&b, Form::Floats), (&a, Form::Base64), (&a, Form::Floats),
            ] {
                // The same key with other bytes (a replaced or recomputed entry), or in
                // the other form: the text follows the bytes and form served, never the
                // slot's.
                let mut out = b"prefix".to_vec();
                table.write(&mut out, &key, v, form);
                prop_assert_eq!(&out[6..], &written(v, form)[..]);
            }
        }
    }

    #[test]
    fn a_slot_keeps_the_last_key_and_bytes_written_to_it() {
        let table = RenderedVectors::new();
        let v = floats(&[0.5, -1.25, 3.0e-7]);
        let w = floats(&[0.5, -1.25, 3.0e-8]);
        let key = digest(1);
        table.write(&mut Vec::new(), &key, &v, Form::Floats);
        assert!(holds(&table, &key, &v), "a small vector is kept");
        assert!(!holds(&table, &key, &w));
        // Another key of the same slot takes it over.
        let mut other = key;
        other.0[31] = 2;
        assert_eq!(slot_of(&key, Form::Floats), slot_of(&other, Form::Floats));
        let mut out = Vec::new();
        table.write(&mut out, &other, &w, Form::Floats);
        assert_eq!(out, formatted(&w));
        assert!(holds(&table, &other, &w));
        assert!(!holds(&table, &key, &v));
        // A vector too large for a slot is formatted, never kept.
        let big = floats(&vec![-1.234_567_9e-12; 1024]);
        let mut out = Vec::new();
        table.write(&mut out, &key, &big, Form::Floats);
        assert_eq!(out, formatted(&big));
        assert!(!holds(&table, &key, &big));
    }

    #[test]
    fn a_keys_two_forms_are_kept_side_by_side() {
        let table = RenderedVectors::new();
        let v = floats(&[0.5, -1.25, 3.0e-7]);
        let key = digest(4);
        assert_ne!(slot_of(&key, Form::Floats), slot_of(&key, Form::Base64));
        for form in [Form::Floats, Form::Base64] {
            let mut out = Vec::new();
            table.write(&mut out, &key, &v, form);
            assert_eq!(out, written(&v, form));
        }
        assert!(holds_form(&table, &key, &v, Form::Floats));
        assert!(holds_form(&table, &key, &v, Form::Base64));
        // Served from the slots: the same text again.
        let mut out = Vec::new();
        table.write(&mut out, &key, &v, Form::Base64);
        assert_eq!(out, br#""AAAAPwAAoL+wD6E0""#);
    }

    #[test]
    fn the_table_holds_at_most_its_budget() {
        let table = RenderedVectors::new();
        // Vectors of every size up to past a slot's share, on many keys.
        for n in 0..400u16 {
            let xs: Vec<f32> = (0..n).map(|i| f32::from(i) * -1.234_567_9e-12).collect();
            let mut key = Digest([0; 32]);
            key.0[..2].copy_from_slice(&n.to_le_bytes());
            key.0[8] = 1;
            let v = floats(&xs);
            let mut out = Vec::new();
            let form = if n % 2 == 0 {
                Form::Floats
            } else {
                Form::Base64
            };
            table.write(&mut out, &key, &v, form);
            assert_eq!(out, written(&v, form));
        }
        let held = table.held_bytes();
        assert!(held > 0);
        assert!(held as u64 <= BUDGET, "{held} bytes held");
        assert_eq!(budget_for(MIN_MEMORY - 1), 0);
        assert_eq!(budget_for(256 << 20), BUDGET);
    }
}
