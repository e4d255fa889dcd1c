//! `--filter` and `--sort` of the `ls` commands: `size>1GB`, `accessed>30d`,
//! `class=models`, `--sort size:desc`.

use std::cmp::Ordering;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// One value a filter or sort can read from a listed item.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A byte count or a plain number.
    Number(u64),
    /// A time (Unix ms): compared by age (`accessed>30d`: last used more than 30 days ago).
    Time(u64),
    /// Text, compared for equality.
    Text(String),
    /// Yes or no.
    Flag(bool),
}

/// Something `ls` lists.
pub trait Listed {
    /// Every field name [`field`](Self::field) answers: filters and sorts are checked
    /// against it before any item is read, so a misspelt field is refused even when
    /// nothing is listed.
    fn fields() -> &'static [&'static str]
    where
        Self: Sized;

    /// The value of `field`, or `None` if there is no such field.
    fn field(&self, field: &str) -> Option<Field>;
}

fn check_field<T: Listed>(kind: &str, field: &str) -> anyhow::Result<()> {
    if T::fields().contains(&field) {
        Ok(())
    } else {
        bail!(
            "unknown {kind} field `{field}` (known: {})",
            T::fields().join(", ")
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

/// One `--filter`: `FIELD OP VALUE`, or a bare `FIELD` for a flag (`pinned`).
#[derive(Debug, Clone)]
pub struct Filter {
    field: String,
    op: Op,
    value: String,
}

impl FromStr for Filter {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("=", Op::Eq),
        ];
        for (text, op) in ops {
            if let Some((field, value)) = s.split_once(text) {
                let field = field.trim().to_ascii_lowercase();
                if field.is_empty() || value.trim().is_empty() {
                    bail!("filter `{s}`: expected FIELD{text}VALUE");
                }
                return Ok(Self {
                    field,
                    op,
                    value: value.trim().to_owned(),
                });
            }
        }
        let field = s.trim().to_ascii_lowercase();
        if field.is_empty() {
            bail!("an empty filter");
        }
        Ok(Self {
            field,
            op: Op::Eq,
            value: "true".to_owned(),
        })
    }
}

impl Filter {
    /// Whether `item` passes, given the time now (Unix ms).
    pub fn matches(&self, item: &dyn Listed, now_ms: u64) -> anyhow::Result<bool> {
        let Some(value) = item.field(&self.field) else {
            bail!("unknown filter field `{}`", self.field);
        };
        let ord = match value {
            Field::Number(n) => {
                let want = parse_size(&self.value)
                    .with_context(|| format!("filter `{}`: a size or number", self.field))?;
                n.cmp(&want)
            }
            Field::Time(t) => {
                let want = parse_age(&self.value).with_context(|| {
                    format!("filter `{}`: an age such as 30d, 12h, 90s", self.field)
                })?;
                let age = now_ms.saturating_sub(t);
                age.cmp(&u64::try_from(want.as_millis()).unwrap_or(u64::MAX))
            }
            Field::Text(t) => {
                let eq = t == self.value;
                return match self.op {
                    Op::Eq => Ok(eq),
                    Op::Ne => Ok(!eq),
                    _ => bail!("filter `{}`: text compares with = or != only", self.field),
                };
            }
            Field::Flag(b) => {
                let want: bool = self
                    .value
                    .parse()
                    .with_context(|| format!("filter `{}`: true or false", self.field))?;
                return match self.op {
                    Op::Eq => Ok(b == want),
                    Op::Ne => Ok(b != want),
                    _ => bail!("filter `{}`: a flag compares with = or != only", self.field),
                };
            }
        };
        Ok(match self.op {
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
        })
    }
}

/// `--sort FIELD[:asc|desc]`.
#[derive(Debug, Clone)]
pub struct Sort {
    field: String,
    descending: bool,
}

impl FromStr for Sort {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (field, dir) = s.split_once(':').unwrap_or((s, "asc"));
        let descending = match dir {
            "asc" => false,
            "desc" => true,
            other => bail!("sort `{s}`: `{other}` is neither asc nor desc"),
        };
        Ok(Self {
            field: field.trim().to_ascii_lowercase(),
            descending,
        })
    }
}

impl Sort {
    /// Sorts `items` (stable); fails on an unknown field.
    pub fn apply<T: Listed>(&self, items: &mut [T]) -> anyhow::Result<()> {
        check_field::<T>("sort", &self.field)?;
        let key = |item: &T| item.field(&self.field);
        items.sort_by(|a, b| {
            let ord = match (key(a), key(b)) {
                (Some(Field::Number(x)), Some(Field::Number(y)))
                | (Some(Field::Time(x)), Some(Field::Time(y))) => x.cmp(&y),
                (Some(Field::Text(x)), Some(Field::Text(y))) => x.cmp(&y),
                (Some(Field::Flag(x)), Some(Field::Flag(y))) => x.cmp(&y),
                _ => Ordering::Equal,
            };
            if self.descending { ord.reverse() } else { ord }
        });
        Ok(())
    }
}

/// Keeps the items every filter passes.
pub fn filter<T: Listed>(items: Vec<T>, filters: &[Filter], now_ms: u64) -> anyhow::Result<Vec<T>> {
    for f in filters {
        check_field::<T>("filter", &f.field)?;
    }
    let mut out = Vec::new();
    for item in items {
        let mut keep = true;
        for f in filters {
            keep &= f.matches(&item, now_ms)?;
        }
        if keep {
            out.push(item);
        }
    }
    Ok(out)
}

/// A byte size (`1GB`, `512MiB`) or a plain number.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    match s.trim().parse::<infercache_core::Capacity>() {
        Ok(infercache_core::Capacity::Bytes(b)) => Ok(b),
        Ok(_) => bail!("`{s}` is a fraction; write bytes with a unit, e.g. 1GB"),
        Err(e) => Err(e.into()),
    }
}

/// An age, as humantime reads it: a number and a unit (`90s`, `15m`, `12h`, `30d`, `2w`).
pub fn parse_age(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s.trim()).with_context(|| format!("`{s}` is not NUMBER+UNIT"))
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    use infercache_core::Clock as _;
    infercache_core::SystemClock.now_ms()
}

/// A short human age: `3d`, `5h`, `12m`, `40s`.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes as `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(u64, u64, &'static str);

    impl Listed for Item {
        fn fields() -> &'static [&'static str] {
            &["size", "accessed", "class"]
        }

        fn field(&self, field: &str) -> Option<Field> {
            match field {
                "size" => Some(Field::Number(self.0)),
                "accessed" => Some(Field::Time(self.1)),
                "class" => Some(Field::Text(self.2.to_owned())),
                _ => None,
            }
        }
    }

    #[test]
    fn filters_compare_sizes_ages_and_text() {
        let now = 100 * 86_400_000;
        let items = vec![
            Item(2_000_000_000, now - 40 * 86_400_000, "models"),
            Item(10, now - 1_000, "system"),
        ];
        let f = |s: &str| s.parse::<Filter>().unwrap();
        let big = filter(items, &[f("size>1GB"), f("accessed>30d")], now).unwrap();
        assert_eq!(big.len(), 1);
        assert!(f("class=models").matches(&big[0], now).unwrap());
        assert!(f("nope>1").matches(&big[0], now).is_err());
        assert!(f("class>a").matches(&big[0], now).is_err());
        assert!("size>".parse::<Filter>().is_err());
    }

    #[test]
    fn sorts_either_way() {
        let mut items = vec![Item(2, 0, "a"), Item(9, 0, "b"), Item(5, 0, "c")];
        "size:desc"
            .parse::<Sort>()
            .unwrap()
            .apply(&mut items)
            .unwrap();
        assert_eq!(items.iter().map(|i| i.0).collect::<Vec<_>>(), [9, 5, 2]);
        assert!("size:up".parse::<Sort>().is_err());
        assert!("nope".parse::<Sort>().unwrap().apply(&mut items).is_err());
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_age("3 parsecs").is_err());
        assert!(parse_age("d").is_err());
        assert_eq!(parse_age("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse_age("90s").unwrap(), Duration::from_secs(90));
    }
}
