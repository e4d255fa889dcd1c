//! Cache keys.
//!
//! A key is the BLAKE3-256 digest of an unambiguous encoding of everything that changes a
//! model's output ([`KeyParts`]). The encoding writes a schema version, then each field as
//! `tag (1 byte) | length (u64 LE) | bytes` in a fixed order, so no two different field
//! tuples share an encoding (there is no way to move bytes from one field into the next),
//! and [`DecodedKey::decode`] recovers the tuple from it, which the property tests use to
//! prove exactly that.

use std::fmt;
use std::str::FromStr;

use crate::CoreError;
use crate::canonical::{CanonicalInput, InputKind};

/// Version of the key encoding. Changing the encoding changes every key; bump this.
pub const KEY_SCHEMA_VERSION: u32 = 1;

/// A 256-bit cache key: the BLAKE3 digest of a [`KeyParts`] encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The digest is already uniformly distributed; its first eight bytes are a hash.
        state.write_u64(self.prefix_u64());
    }
}

impl Digest {
    /// The first eight bytes as a little-endian integer (already a good hash).
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// A digest of arbitrary bytes; for callers that key by their own identifiers
    /// (trace replay, benchmarks, raw blobs).
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The digest of a 64-bit number's little-endian bytes.
    pub fn of_u64(n: u64) -> Self {
        Self::of(&n.to_le_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| CoreError::InvalidDigest(s.to_owned()))?;
        Ok(Self(out))
    }
}

/// Invalidation epochs folded into a key. Bumping any of them makes every key built with
/// the old value unreachable at once, with no scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Epochs {
    /// The configured cache version (`--cache-version`): bumping it invalidates everything.
    pub cache_version: u64,
    /// Whole-cache epoch: every "invalidate all".
    pub global: u64,
    /// Epoch of the namespace (tenant).
    pub namespace: u64,
    /// Epoch of the model (all versions).
    pub model: u64,
    /// Epoch of this model version.
    pub version: u64,
}

/// Everything that changes a model's output, i.e. everything a key must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// Namespace: the tenant. Tenants never share entries.
    pub namespace: &'a str,
    /// Model id.
    pub model: &'a str,
    /// Model version.
    pub version: &'a str,
    /// Digest of the model artifact (weights), when known.
    pub artifact: Option<&'a str>,
    /// Invalidation epochs.
    pub epochs: Epochs,
    /// The input, canonical.
    pub input: &'a CanonicalInput,
    /// Canonical JSON of the request parameters that change the output (empty when none).
    pub params: &'a [u8],
}

mod tag {
    pub const NAMESPACE: u8 = 1;
    pub const MODEL: u8 = 2;
    pub const VERSION: u8 = 3;
    pub const ARTIFACT_NONE: u8 = 4;
    pub const ARTIFACT: u8 = 5;
    pub const EPOCHS: u8 = 6;
    pub const INPUT: u8 = 7;
    pub const PARAMS: u8 = 8;
}

/// Where an encoding is written: a buffer ([`KeyParts::encode`]) or straight into the
/// hasher through [`Gathered`] ([`KeyParts::digest`]), so that both come from the one
/// definition below and taking a key allocates nothing.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The hasher behind a small buffer: a key's encoding is some thirty short pieces (tags,
/// lengths, names), and each `blake3::Hasher::update` call has a fixed cost that, for
/// pieces this short, is most of the hashing. Pieces are gathered here and handed to the
/// hasher in one call; a piece that does not fit (a large input) goes to it directly,
/// after what was gathered, so nothing is copied that would not have been. The digest is
/// the same however the bytes are split across calls.
struct Gathered {
    hasher: blake3::Hasher,
    buf: [u8; GATHERED],
    len: usize,
}

/// Bytes [`Gathered`] holds before it hashes them: room for the encoding of a key with
/// short names and an input of a few hundred bytes.
const GATHERED: usize = 512;

impl Gathered {
    fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            buf: [0; GATHERED],
            len: 0,
        }
    }

    fn flush(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }

    fn finalize(mut self) -> Digest {
        self.flush();
        Digest(*self.hasher.finalize().as_bytes())
    }
}

impl Sink for Gathered {
    fn put(&mut self, bytes: &[u8]) {
        if bytes.len() > GATHERED - self.len {
            self.flush();
            if bytes.len() >= GATHERED {
                self.hasher.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// A field as [`crate::encode::put_field`] writes it, after its tag.
fn put(out: &mut impl Sink, tag: u8, bytes: &[u8]) {
    out.put(&[tag]);
    out.put(&(bytes.len() as u64).to_le_bytes());
    out.put(bytes);
}

impl KeyParts<'_> {
    /// The unambiguous encoding that the digest is taken over.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + 10 * 9
                + self.namespace.len()
                + self.model.len()
                + self.version.len()
                + self.artifact.map_or(0, str::len)
                + 40
                + self.input.as_bytes().len()
                + self.params.len(),
        );
        self.write(&mut out);
        out
    }

    /// Writes the encoding: every field before the input, the input's tag, length and
    /// kind, its bytes, then the parameters.
    fn write(&self, out: &mut impl Sink) {
        out.put(&KEY_SCHEMA_VERSION.to_le_bytes());
        put(out, tag::NAMESPACE, self.namespace.as_bytes());
        put(out, tag::MODEL, self.model.as_bytes());
        put(out, tag::VERSION, self.version.as_bytes());
        match self.artifact {
            None => put(out, tag::ARTIFACT_NONE, &[]),
            Some(a) => put(out, tag::ARTIFACT, a.as_bytes()),
        }
        let e = self.epochs;
        let mut epochs = [0u8; 40];
        for (i, v) in [e.cache_version, e.global, e.namespace, e.model, e.version]
            .into_iter()
            .enumerate()
        {
            epochs[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        put(out, tag::EPOCHS, &epochs);
        // The input kind travels inside the input field, ahead of its bytes.
        out.put(&[tag::INPUT]);
        out.put(&(self.input.as_bytes().len() as u64 + 1).to_le_bytes());
        out.put(&[self.input.kind() as u8]);
        out.put(self.input.as_bytes());
        put(out, tag::PARAMS, self.params);
    }

    /// The cache key: the digest of [`KeyParts::encode`], hashed as it is written, with
    /// no allocation (short pieces gathered on the stack; a large input hashed in place,
    /// not copied).
    pub fn digest(&self) -> Digest {
        let mut gathered = Gathered::new();
        self.write(&mut gathered);
        gathered.finalize()
    }
}

/// A decoded key encoding; the inverse of [`KeyParts::encode`], used to show the encoding
/// is injective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedKey {
    /// Schema version.
    pub schema: u32,
    /// Namespace.
    pub namespace: String,
    /// Model id.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Artifact digest.
    pub artifact: Option<String>,
    /// Epochs.
    pub epochs: Epochs,
    /// Input kind byte.
    pub input_kind: u8,
    /// Canonical input bytes.
    pub input: Vec<u8>,
    /// Parameter bytes.
    pub params: Vec<u8>,
}

impl DecodedKey {
    /// Decodes an encoding made by [`KeyParts::encode`]; `None` if it is not one.
    pub fn decode(mut bytes: &[u8]) -> Option<Self> {
        fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
            if bytes.len() < n {
                return None;
            }
            let (head, tail) = bytes.split_at(n);
            *bytes = tail;
            Some(head)
        }
        fn field<'b>(bytes: &mut &'b [u8], want: &[u8]) -> Option<(u8, &'b [u8])> {
            let tag = *take(bytes, 1)?.first()?;
            if !want.contains(&tag) {
                return None;
            }
            let len = u64::from_le_bytes(take(bytes, 8)?.try_into().ok()?);
            let body = take(bytes, usize::try_from(len).ok()?)?;
            Some((tag, body))
        }
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        let schema = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?);
        let namespace = text(field(&mut bytes, &[tag::NAMESPACE])?.1)?;
        let model = text(field(&mut bytes, &[tag::MODEL])?.1)?;
        let version = text(field(&mut bytes, &[tag::VERSION])?.1)?;
        let artifact = match field(&mut bytes, &[tag::ARTIFACT_NONE, tag::ARTIFACT])? {
            (tag::ARTIFACT, a) => Some(text(a)?),
            (_, []) => None,
            _ => return None,
        };
        let e = field(&mut bytes, &[tag::EPOCHS])?.1;
        if e.len() != 40 {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let epochs = Epochs {
            cache_version: word(0),
            global: word(1),
            namespace: word(2),
            model: word(3),
            version: word(4),
        };
        let input = field(&mut bytes, &[tag::INPUT])?.1;
        let (&input_kind, input) = input.split_first()?;
        let params = field(&mut bytes, &[tag::PARAMS])?.1.to_vec();
        if !bytes.is_empty() {
            return None;
        }
        Some(Self {
            schema,
            namespace,
            model,
            version,
            artifact,
            epochs,
            input_kind,
            input: input.to_vec(),
            params,
        })
    }
}

impl InputKind {
    /// The kind with this tag byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Text,
            2 => Self::Json,
            3 => Self::Tensor,
            4 => Self::Bytes,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Tuple {
        namespace: String,
        model: String,
        version: String,
        artifact: Option<String>,
        epochs: (u64, u64, u64, u64, u64),
        input: (u8, String),
        params: String,
    }

    impl Tuple {
        fn input(&self) -> CanonicalInput {
            match self.input.0 % 3 {
                0 => CanonicalInput::text(&self.input.1),
                1 => CanonicalInput::bytes(self.input.1.as_bytes()),
                _ => {
                    CanonicalInput::json(&serde_json::Value::String(self.input.1.clone())).unwrap()
                }
            }
        }
        fn with<R>(&self, f: impl FnOnce(KeyParts<'_>) -> R) -> R {
            let input = self.input();
            f(KeyParts {
                namespace: &self.namespace,
                model: &self.model,
                version: &self.version,
                artifact: self.artifact.as_deref(),
                epochs: Epochs {
                    cache_version: self.epochs.4,
                    global: self.epochs.0,
                    namespace: self.epochs.1,
                    model: self.epochs.2,
                    version: self.epochs.3,
                },
                input: &input,
                params: self.params.as_bytes(),
            })
        }
    }

    // Small alphabets make accidental equal neighbours and concatenation overlaps likely.
    fn arb_tuple() -> impl Strategy<Value = Tuple> {
        let s = || "[ab]{0,3}";
        (
            s(),
            s(),
            s(),
            prop::option::of(s()),
            (0u64..2, 0u64..2, 0u64..2, 0u64..2, 0u64..2),
            (0u8..3, s()),
            s(),
        )
            .prop_map(
                |(namespace, model, version, artifact, epochs, input, params)| Tuple {
                    namespace,
                    model,
                    version,
                    artifact,
                    epochs,
                    input,
                    params,
                },
            )
    }

    /// The tuple with field `i` changed to something else.
    fn mutate(t: &Tuple, i: usize) -> Tuple {
        let mut m = t.clone();
        let bump = |s: &mut String| s.push('c');
        match i {
            0 => bump(&mut m.namespace),
            1 => bump(&mut m.model),
            2 => bump(&mut m.version),
            3 => {
                m.artifact = if t.artifact.is_some() {
                    None
                } else {
                    Some(String::new())
                }
            }
            4 => m.epochs.0 += 1,
            5 => m.epochs.1 += 1,
            6 => m.epochs.2 += 1,
            7 => m.epochs.3 += 1,
            8 => bump(&mut m.input.1),
            9 => m.input.0 = (t.input.0 + 1) % 3,
            10 => m.epochs.4 += 1,
            _ => bump(&mut m.params),
        }
        m
    }

    proptest! {
        #[test]
        fn encoding_round_trips(t in arb_tuple()) {
            let decoded = t.with(|k| DecodedKey::decode(&k.encode())).expect("decodes");
            prop_assert_eq!(decoded.namespace, t.namespace.clone());
            prop_assert_eq!(decoded.model, t.model.clone());
            prop_assert_eq!(decoded.version, t.version.clone());
            prop_assert_eq!(decoded.artifact, t.artifact.clone());
            prop_assert_eq!(decoded.params, t.params.as_bytes().to_vec());
            prop_assert_eq!(decoded.input, t.input().as_bytes().to_vec());
            prop_assert_eq!(decoded.input_kind, t.input().kind() as u8);
        }

        #[test]
        fn different_tuples_never_share_an_encoding(a in arb_tuple(), b in arb_tuple()) {
            let (ea, eb) = (a.with(|k| k.encode()), b.with(|k| k.encode()));
            let same_fields = a.namespace == b.namespace && a.model == b.model && a.version == b.version
                && a.artifact == b.artifact && a.epochs == b.epochs && a.input() == b.input()
                && a.params == b.params;
            prop_assert_eq!(ea == eb, same_fields);
            prop_assert_eq!(a.with(|k| k.digest()) == b.with(|k| k.digest()), same_fields);
        }

        #[test]
        fn the_digest_hashes_exactly_the_encoding(t in arb_tuple()) {
            prop_assert_eq!(t.with(|k| k.digest()), t.with(|k| Digest::of(&k.encode())));
        }

        #[test]
        fn changing_any_one_field_changes_the_key(t in arb_tuple(), field in 0usize..12) {
            let m = mutate(&t, field);
            prop_assert_ne!(t.with(|k| k.digest()), m.with(|k| k.digest()), "field {}", field);
        }
    }

    #[test]
    fn concatenation_cannot_collide() {
        let input = CanonicalInput::text("x");
        let base = KeyParts {
            namespace: "ab",
            model: "c",
            version: "",
            artifact: None,
            epochs: Epochs::default(),
            input: &input,
            params: b"",
        };
        let shifted = KeyParts {
            namespace: "a",
            model: "bc",
            ..base.clone()
        };
        assert_ne!(base.digest(), shifted.digest());
    }

    #[test]
    fn reordered_json_input_gives_the_same_key() {
        let a = CanonicalInput::json_str(r#"{"x": 1, "y": [1.0, 2]}"#).unwrap();
        let b = CanonicalInput::json_str(r#"{"y":[1.0,2],"x":1}"#).unwrap();
        let key = |input: &CanonicalInput| {
            KeyParts {
                namespace: "t",
                model: "m",
                version: "1",
                artifact: Some("sha256:00"),
                epochs: Epochs::default(),
                input,
                params: b"",
            }
            .digest()
        };
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn the_digest_is_that_of_the_encoding() {
        let input = CanonicalInput::json_str("[1, 2.5]").unwrap();
        let parts = KeyParts {
            namespace: "t",
            model: "m",
            version: "1",
            artifact: Some("upstream:ab"),
            epochs: Epochs::default(),
            input: &input,
            params: b"{}",
        };
        assert_eq!(parts.digest(), Digest::of(&parts.encode()));
    }

    #[test]
    fn the_digest_is_that_of_the_encoding_around_the_gathered_buffer() {
        // Inputs and parameters whose pieces end before, at and past the buffer's end,
        // and pieces larger than the buffer, hashed in place.
        for input_len in [
            0, 1, 399, 420, 440, 460, 480, 500, 511, 512, 513, 1000, 70_000,
        ] {
            for params_len in [0, 2, 100, 511, 512, 600] {
                let input = CanonicalInput::bytes(&vec![b'x'; input_len]);
                let params = vec![b'p'; params_len];
                let parts = KeyParts {
                    namespace: "tenant",
                    model: "all-MiniLM-L6-v2",
                    version: "1",
                    artifact: Some("sha256:0123456789abcdef"),
                    epochs: Epochs::default(),
                    input: &input,
                    params: &params,
                };
                assert_eq!(
                    parts.digest(),
                    Digest::of(&parts.encode()),
                    "input {input_len} bytes, params {params_len} bytes"
                );
            }
        }
    }

    #[test]
    fn digest_hex_round_trips() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
