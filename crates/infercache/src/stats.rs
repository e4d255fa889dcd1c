//! `infercache stats`: `GET /v1/cache/stats` as two tables (tiers, models), or raw JSON.

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::Args;
use infercache_api::CacheStats as Stats;
use infercache_core::Capacity;

use crate::client::{self, Client, ServerArgs};

#[derive(Debug, Args)]
pub struct StatsCommand {
    /// Print the server's JSON as it came.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(cmd: &StatsCommand) -> anyhow::Result<()> {
    let client = Client::new(&cmd.server)?;
    let body = client::runtime()?.block_on(client.get("v1/cache/stats"))?;
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let stats: Stats =
        serde_json::from_value(body).context("the server's stats are not in the expected shape")?;
    print!("{}", render(&stats));
    Ok(())
}

fn render(s: &Stats) -> String {
    let mut out = String::new();
    if !s.cache_enabled {
        out.push_str("cache: disabled (the server runs with --disable-cache)\n\n");
    }
    let mut tiers = Table::new([
        "tier",
        "hits",
        "misses",
        "hit rate",
        "entries",
        "bytes",
        "capacity",
        "inserts",
        "evictions",
        "expired",
        "corrupt",
    ]);
    for (name, tier) in [("memory", &s.tiers.memory), ("disk", &s.tiers.disk)] {
        match tier {
            Some(t) => tiers.row([
                name.to_owned(),
                t.hits.to_string(),
                t.misses.to_string(),
                percent(t.hit_rate),
                t.entries.to_string(),
                bytes(t.bytes),
                bytes(t.capacity),
                t.inserts.to_string(),
                t.evictions.to_string(),
                t.expirations.to_string(),
                t.corrupt.to_string(),
            ]),
            None => tiers.row([name.to_owned(), "off".to_owned()]),
        }
    }
    if let Some(r) = &s.tiers.redis {
        let lookups = r.hits + r.misses;
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let rate = if lookups == 0 {
            0.0
        } else {
            r.hits as f64 / lookups as f64
        };
        tiers.row([
            "redis".to_owned(),
            r.hits.to_string(),
            r.misses.to_string(),
            percent(rate),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            r.writes.to_string(),
            "-".to_owned(),
            "-".to_owned(),
            r.corrupt.to_string(),
        ]);
    }
    out.push_str(&tiers.render());
    if let Some(r) = &s.tiers.redis {
        let _ = writeln!(
            out,
            "redis {}: breaker {} (opened {} times), {} errors, {} calls skipped, {} leases held \
             by other nodes, {} write-back drops",
            r.endpoint,
            r.breaker,
            r.breaker_opened,
            r.errors,
            r.skipped,
            r.leases_contended,
            r.writeback_dropped
        );
    }
    out.push('\n');
    let mut models = Table::new([
        "model",
        "hits",
        "misses",
        "hit rate",
        "inserts",
        "coalesced",
        "mean hit",
        "mean miss",
        "model calls",
        "texts run",
        "time saved",
    ]);
    for (name, m) in &s.models {
        let (l, p) = (&m.lookups, m.in_process.as_ref());
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        models.row([
            name.clone(),
            l.hits.to_string(),
            l.misses.to_string(),
            percent(l.hit_rate),
            l.inserts.to_string(),
            l.coalesced.to_string(),
            or_dash(p.and_then(|p| p.mean_hit_latency_ms).map(millis)),
            or_dash(p.and_then(|p| p.mean_miss_latency_ms).map(millis)),
            or_dash(p.map(|p| p.inference.invocations.to_string())),
            or_dash(p.map(|p| p.inference.texts.to_string())),
            or_dash(p.map(|p| millis(p.inference_time_saved_ms))),
        ]);
    }
    out.push_str(&models.render());
    let _ = writeln!(
        out,
        "\ncoalesced requests: {}   write-back queued: {}   write-back dropped: {}",
        s.coalesced, s.writeback_queued, s.writeback_dropped
    );
    out
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn bytes(n: u64) -> String {
    Capacity::Bytes(n).to_string()
}

/// Milliseconds with a unit that keeps them short: `0.42 ms`, `35.1 ms`, `12.3 s`, `4.2 h`.
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.1} ms")
    } else if ms < 3_600_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{:.1} h", ms / 3_600_000.0)
    }
}

/// A text table: the first column left-aligned, the others right-aligned.
#[derive(Debug)]
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            rows: vec![header.iter().map(|&h| h.to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().collect());
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let width = widths[c];
                if c == 0 {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "  {cell:>width$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_absent_tiers_read_off() {
        let stats: Stats = serde_json::from_value(serde_json::json!({
            "cache_enabled": true,
            "tiers": {
                "memory": { "hits": 3, "misses": 1, "hit_rate": 0.75, "entries": 2,
                            "bytes": 2048, "capacity": 1048576, "inserts": 2 },
                "disk": null
            },
            "models": {
                "m": { "hits": 3, "misses": 1, "hit_rate": 0.75, "inserts": 1,
                       "mean_hit_latency_ms": 0.5, "mean_miss_latency_ms": null,
                       "inference": { "invocations": 1, "texts": 1, "calls": 1 },
                       "inference_time_saved_ms": 12345.0 }
            }
        }))
        .unwrap();
        let text = render(&stats);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("tier    hits"), "{text}");
        assert!(lines[1].starts_with("memory") && lines[1].contains("75.0%"));
        assert!(
            lines[1].contains("2.0 KiB") && lines[1].contains("1.0 MiB"),
            "{text}"
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["disk", "off"]
        );
        let model = lines.iter().find(|l| l.starts_with("m ")).unwrap();
        assert!(
            model.contains("0.50 ms") && model.contains("12.3 s"),
            "{text}"
        );
        assert!(model.contains(" - "), "{text}");
    }

    #[test]
    fn the_redis_tier_shows_its_row_and_breaker() {
        let stats: Stats = serde_json::from_value(serde_json::json!({
            "cache_enabled": true,
            "tiers": {
                "memory": null, "disk": null,
                "redis": { "endpoint": "redis://127.0.0.1:6379", "breaker": "open",
                           "breaker_opened": 2, "hits": 3, "misses": 1, "writes": 4,
                           "errors": 7, "skipped": 9 }
            }
        }))
        .unwrap();
        let text = render(&stats);
        let row = text.lines().find(|l| l.starts_with("redis ")).unwrap();
        assert!(row.contains("75.0%"), "{text}");
        assert!(
            text.contains("breaker open (opened 2 times), 7 errors, 9 calls skipped"),
            "{text}"
        );
    }
}
