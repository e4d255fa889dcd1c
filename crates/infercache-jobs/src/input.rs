//! [`Input`]: one input of a job, in the canonical form its cache key is made of.

use infercache_core::CanonicalInput;
use infercache_core::canonical::InputKind as Kind;
use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// One input of a job: a text (a text model's input) or a JSON value (a plain JSON
/// model's), in its canonical form ([`CanonicalInput`]: a text as its bytes, JSON in
/// canonical JSON, keys sorted, no whitespace, every number as the file wrote it).
///
/// Made once, when the file is read: the job finds repeats by it, the per-row path keys
/// the input by it without canonicalizing it again
/// ([`infercache_infer::CanonicalRows`]), the model receives it, and the output shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Input(CanonicalInput);

impl Input {
    /// A text input, as given.
    pub fn text(text: &str) -> Self {
        Self(CanonicalInput::text(text))
    }

    /// A JSON input from its JSON text (numbers kept as written).
    ///
    /// # Errors
    /// A message when `text` is not JSON.
    pub fn json(text: &str) -> Result<Self, String> {
        CanonicalInput::json_str(text)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// A JSON input holding the string `s`.
    pub fn json_string(s: &str) -> Self {
        Self(
            CanonicalInput::json(&Value::String(s.to_owned()))
                .expect("a JSON string has no number to be non-finite"),
        )
    }

    /// The canonical form.
    pub fn canonical(&self) -> &CanonicalInput {
        &self.0
    }

    /// The input's text, for a text input.
    pub fn as_text(&self) -> Option<&str> {
        match self.0.kind() {
            Kind::Text => std::str::from_utf8(self.0.as_bytes()).ok(),
            _ => None,
        }
    }

    /// The input as JSON text: a text as a JSON string, a JSON input in its canonical
    /// JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self.as_text() {
            Some(text) => {
                serde_json::to_writer(&mut *out, text).expect("writing JSON to memory cannot fail");
            }
            None => out.extend_from_slice(self.0.as_bytes()),
        }
    }

    /// The input as a JSON value.
    pub fn to_value(&self) -> Value {
        match self.as_text() {
            Some(text) => Value::String(text.to_owned()),
            None => serde_json::from_slice(self.0.as_bytes()).expect("canonical JSON is JSON"),
        }
    }
}

impl Serialize for Input {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_text() {
            Some(text) => serializer.serialize_str(text),
            None => {
                let text = std::str::from_utf8(self.0.as_bytes()).expect("canonical JSON is UTF-8");
                let raw: &RawValue =
                    serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
                raw.serialize(serializer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_inputs_are_canonical_whatever_their_spelling() {
        let a = Input::json(r#"{ "b": [1.50, "x"], "a": 1 }"#).unwrap();
        let b = Input::json(r#"{"a":1,"b":[1.50,"x"]}"#).unwrap();
        assert_eq!(a, b);
        let mut out = Vec::new();
        a.write_json(&mut out);
        assert_eq!(out, br#"{"a":1,"b":[1.50,"x"]}"#);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"a":1,"b":[1.50,"x"]}"#
        );
        assert_eq!(Input::json(r#""\u0041""#).unwrap(), Input::json_string("A"));
        assert!(Input::json("{").is_err());
    }

    #[test]
    fn a_text_is_written_as_a_json_string() {
        let t = Input::text("say \"hi\"");
        assert_eq!(t.as_text(), Some("say \"hi\""));
        let mut out = Vec::new();
        t.write_json(&mut out);
        assert_eq!(out, br#""say \"hi\"""#);
        assert_eq!(t.to_value(), Value::String("say \"hi\"".into()));
        assert_ne!(t, Input::json_string("say \"hi\""));
    }
}
