//! Byte sizes as operators write them.

use std::fmt;
use std::str::FromStr;

use crate::CoreError;

/// A capacity: an absolute byte count (`512MiB`, `2GB`, `1048576`) or a fraction of the
/// machine's RAM (`0.3` is 30 %, the way Ersilia sizes its Redis).
///
/// A plain number is a fraction when it has a decimal point and lies in (0, 1]; otherwise
/// it is a byte count. Resolving a fraction needs the RAM size, which the caller supplies
/// (the engine reads it from the system).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Capacity {
    /// An absolute number of bytes.
    Bytes(u64),
    /// A fraction of total system memory, in (0, 1].
    FractionOfRam(f64),
}

impl Capacity {
    /// Bytes, given the machine's total RAM.
    pub fn resolve(self, total_ram: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "fraction in (0, 1] of a RAM size"
            )]
            Self::FractionOfRam(f) => (total_ram as f64 * f) as u64,
        }
    }
}

impl FromStr for Capacity {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let invalid = |reason: &str| CoreError::InvalidSize {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if t.is_empty() {
            return Err(invalid("empty"));
        }
        if t.contains('.') && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
            let f: f64 = t.parse().map_err(|_| invalid("not a number"))?;
            if f > 0.0 && f <= 1.0 {
                return Ok(Self::FractionOfRam(f));
            }
            return Err(invalid(
                "a fraction of RAM must be in (0, 1]; write bytes with a unit, e.g. 512MiB",
            ));
        }
        if let Ok(b) = t.parse::<u64>() {
            return Ok(Self::Bytes(b));
        }
        t.parse::<bytesize::ByteSize>()
            .map(|b| Self::Bytes(b.as_u64()))
            .map_err(|e| invalid(&e))
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "{}", bytesize::ByteSize(*b).display().iec()),
            Self::FractionOfRam(x) => write!(f, "{:.0}% of RAM", x * 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!(
            "512MiB".parse::<Capacity>().unwrap(),
            Capacity::Bytes(512 << 20)
        );
        assert_eq!(
            "1 GB".parse::<Capacity>().unwrap(),
            Capacity::Bytes(1_000_000_000)
        );
        assert_eq!("4096".parse::<Capacity>().unwrap(), Capacity::Bytes(4096));
        assert_eq!(
            "0.3".parse::<Capacity>().unwrap(),
            Capacity::FractionOfRam(0.3)
        );
        assert_eq!(Capacity::FractionOfRam(0.25).resolve(1000), 250);
        for bad in ["", "1.5", "0.0", "-1", "lots", "12 parsecs"] {
            assert!(bad.parse::<Capacity>().is_err(), "{bad}");
        }
    }
}
