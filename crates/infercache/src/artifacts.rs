//! `infercache artifacts ls|add|rm|prune|verify|pin`: the local artifact store
//! ([`infercache_artifact`]), as the Hugging Face hub's cache commands, plus its caps.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use infercache_artifact::{BlobInfo, Digest, Snapshot, SnapshotFile, Store, StoreConfig};

use crate::listing::{self, Field, Filter, Listed, Sort};

#[derive(Debug, Args)]
pub struct ArtifactsCommand {
    /// The store's directory [default: `artifacts/` in the cache directory].
    #[arg(
        long,
        env = "INFERCACHE_ARTIFACTS_DIR",
        value_name = "DIR",
        global = true
    )]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List blobs: digest, class, size, last use, pins, snapshots; and each class's usage.
    Ls {
        /// Keep blobs matching FIELD OP VALUE (`size>1GB`, `accessed>30d`, `inserted<1h`,
        /// `class=models`, `pinned`, `in_use`, `expired`); repeat to combine.
        #[arg(long, value_name = "EXPR")]
        filter: Vec<Filter>,
        /// Order by `size`, `accessed`, `inserted`, `class` or `digest`, `:asc` or `:desc`.
        #[arg(long, value_name = "FIELD[:asc|desc]")]
        sort: Option<Sort>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Insert files (verified against --expect when given); optionally name them as a
    /// snapshot.
    Add {
        /// The files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Their class (`models`, `training`, `system`).
        #[arg(long, default_value = "models")]
        class: String,
        /// The digest the (single) file must have: `sha256:<hex>` or `blake3:<hex>`.
        #[arg(long, value_name = "DIGEST")]
        expect: Option<Digest>,
        /// Write a snapshot with this name listing the files by their file names.
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
    },
    /// Remove blobs (by digest) or snapshots (by name).
    Rm {
        /// Digests (`blake3:…`, `sha256:…`) or snapshot names.
        #[arg(required = true, value_name = "DIGEST|SNAPSHOT")]
        targets: Vec<String>,
        /// Also remove pinned blobs and blobs in use.
        #[arg(long)]
        force: bool,
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove expired blobs, bring every class under its cap, remove temporaries.
    Prune {
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Hash every blob again; corrupt ones are removed.
    Verify {
        /// Report corrupt blobs but keep them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pin a blob (by digest) or every blob of a snapshot (by name): never evicted.
    Pin {
        /// A digest or a snapshot name.
        #[arg(value_name = "DIGEST|SNAPSHOT")]
        target: String,
        /// Why (shown by `ls`).
        #[arg(long, default_value = "pinned by hand")]
        reason: String,
        /// Unpin instead.
        #[arg(long)]
        remove: bool,
    },
}

impl Listed for BlobInfo {
    fn fields() -> &'static [&'static str] {
        &[
            "size", "accessed", "inserted", "class", "digest", "pinned", "in_use", "expired",
        ]
    }

    fn field(&self, field: &str) -> Option<Field> {
        Some(match field {
            "size" => Field::Number(self.size),
            "accessed" => Field::Time(self.accessed_ms),
            "inserted" => Field::Time(self.inserted_ms),
            "class" => Field::Text(self.class.clone()),
            "digest" => Field::Text(self.digest.to_string()),
            "pinned" => Field::Flag(self.pinned.is_some()),
            "in_use" => Field::Flag(self.in_use),
            "expired" => Field::Flag(self.expired),
            _ => return None,
        })
    }
}

fn open(dir: Option<&PathBuf>) -> anyhow::Result<Store> {
    let dir = dir
        .cloned()
        .unwrap_or_else(|| infercache_model::default_cache_dir().join("artifacts"));
    Store::open(
        &dir,
        StoreConfig::default(),
        infercache_core::SystemClock::shared(),
    )
    .with_context(|| format!("opening the artifact store in {}", dir.display()))
}

pub fn run(cmd: &ArtifactsCommand) -> anyhow::Result<()> {
    let store = open(cmd.dir.as_ref())?;
    match &cmd.action {
        Action::Ls { filter, sort, json } => ls(&store, filter, sort.as_ref(), *json),
        Action::Add {
            files,
            class,
            expect,
            snapshot,
        } => add(&store, files, class, expect.as_ref(), snapshot.as_deref()),
        Action::Rm {
            targets,
            force,
            dry_run,
        } => rm(&store, targets, *force, *dry_run),
        Action::Prune { dry_run } => {
            let report = store.prune(*dry_run)?;
            let verb = if *dry_run { "would remove" } else { "removed" };
            for e in &report.evicted {
                println!(
                    "{verb} {} ({}, class {}, {})",
                    e.digest,
                    listing::bytes(e.size),
                    e.class,
                    if e.expired { "expired" } else { "over the cap" }
                );
            }
            for (path, size) in &report.temporaries {
                println!("{verb} {} ({})", path.display(), listing::bytes(*size));
            }
            let freed: u64 = report.evicted.iter().map(|e| e.size).sum::<u64>()
                + report.temporaries.iter().map(|t| t.1).sum::<u64>();
            println!("{verb} {} in all", listing::bytes(freed));
            Ok(())
        }
        Action::Verify { dry_run } => {
            let total: u64 = store.list()?.iter().map(|b| b.size).sum();
            let bar = progress(total);
            let report = store.verify(*dry_run, |n| bar.inc(n))?;
            bar.finish_and_clear();
            for (digest, actual) in &report.corrupt {
                println!(
                    "corrupt: {digest} (its bytes hash to {actual}){}",
                    if *dry_run { "" } else { "; removed" }
                );
            }
            println!(
                "{} blobs ok, {} corrupt, {} hashed",
                report.ok,
                report.corrupt.len(),
                listing::bytes(report.bytes)
            );
            if report.corrupt.is_empty() {
                Ok(())
            } else {
                bail!("{} corrupt blobs", report.corrupt.len())
            }
        }
        Action::Pin {
            target,
            reason,
            remove,
        } => pin(&store, target, reason, *remove),
    }
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{spinner} verifying [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .expect("the progress template is valid: a bug if not")
        .progress_chars("=> "),
    )
}

fn ls(store: &Store, filters: &[Filter], sort: Option<&Sort>, json: bool) -> anyhow::Result<()> {
    let now = listing::now_ms();
    let mut blobs = listing::filter(store.list()?, filters, now)?;
    match sort {
        Some(s) => s.apply(&mut blobs)?,
        None => blobs.sort_by(|a, b| (&a.class, a.digest).cmp(&(&b.class, b.digest))),
    }
    let usage = store.usage()?;
    if json {
        let out = serde_json::json!({ "blobs": blobs, "classes": usage });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<9} {:>10} {:>8} {:>8}  pins / snapshots",
        "digest", "class", "size", "used", "added"
    );
    for b in &blobs {
        let mut notes: Vec<String> = Vec::new();
        if let Some(reason) = &b.pinned {
            notes.push(format!("pinned ({reason})"));
        }
        if b.in_use {
            notes.push("in use".to_owned());
        }
        if b.expired {
            notes.push("expired".to_owned());
        }
        notes.extend(b.snapshots.iter().cloned());
        println!(
            "{:<20} {:<9} {:>10} {:>8} {:>8}  {}",
            format!("blake3:{}", &b.digest.hex()[..12]),
            b.class,
            listing::bytes(b.size),
            listing::age(now, b.accessed_ms),
            listing::age(now, b.inserted_ms),
            notes.join(", ")
        );
    }
    println!();
    for (class, u) in &usage {
        println!(
            "{class}: {} of {} ({} blobs, {})",
            listing::bytes(u.used),
            listing::bytes(u.cap),
            u.blobs,
            u.policy
        );
    }
    Ok(())
}

fn add(
    store: &Store,
    files: &[PathBuf],
    class: &str,
    expect: Option<&Digest>,
    snapshot: Option<&str>,
) -> anyhow::Result<()> {
    if expect.is_some() && files.len() != 1 {
        bail!(
            "--expect names the digest of one file; {} were given",
            files.len()
        );
    }
    let mut entries = std::collections::BTreeMap::new();
    for file in files {
        let inserted = match expect {
            // Known digest: one copy at a time, however many processes add it at once.
            Some(expected) => {
                let fetched = store
                    .get_or_fetch(class, expected, |partial| {
                        partial.restart().map_err(std::io::Error::other)?;
                        let mut source = std::fs::File::open(file)?;
                        std::io::copy(&mut source, partial)?;
                        Ok::<_, std::io::Error>(())
                    })
                    .with_context(|| format!("adding {}", file.display()))?;
                let blob = fetched.blob;
                infercache_artifact::Inserted {
                    digest: blob.digest(),
                    sha256: blob.sha256(),
                    size: blob.len(),
                    new: fetched.fetched,
                    evicted: Vec::new(),
                }
            }
            None => store
                .insert_file(class, file, None)
                .with_context(|| format!("adding {}", file.display()))?,
        };
        for e in &inserted.evicted {
            eprintln!("evicted {} ({})", e.digest, listing::bytes(e.size));
        }
        println!(
            "{} {} {} {}",
            inserted.digest,
            inserted.sha256,
            listing::bytes(inserted.size),
            if inserted.new {
                "added"
            } else {
                "already there"
            }
        );
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .context("a file name that is not UTF-8")?
            .to_owned();
        entries.insert(
            name,
            SnapshotFile {
                blob: inserted.digest,
                sha256: inserted.sha256,
                size: inserted.size,
            },
        );
    }
    if let Some(name) = snapshot {
        store.put_snapshot(&Snapshot {
            name: name.to_owned(),
            files: entries,
        })?;
        println!("snapshot {name}");
    }
    Ok(())
}

fn rm(store: &Store, targets: &[String], force: bool, dry_run: bool) -> anyhow::Result<()> {
    let verb = if dry_run { "would remove" } else { "removed" };
    for target in targets {
        if let Ok(digest) = target.parse::<Digest>() {
            let info = store
                .list()?
                .into_iter()
                .find(|b| b.digest == digest || b.sha256 == digest)
                .with_context(|| format!("no blob {digest} in the store"))?;
            if !force {
                if let Some(reason) = &info.pinned {
                    bail!("{digest} is pinned ({reason}); pass --force to remove it anyway");
                }
                if info.in_use {
                    bail!("{digest} is in use; pass --force to remove it anyway");
                }
            }
            if !dry_run {
                store.remove(&digest, force)?;
            }
            println!("{verb} {} ({})", info.digest, listing::bytes(info.size));
        } else if snapshot_named(store, target)?.is_some() {
            if !dry_run {
                store.remove_snapshot(target)?;
            }
            println!("{verb} snapshot {target} (its blobs stay until evicted or removed)");
        } else {
            bail!("`{target}` is neither a digest (blake3:… or sha256:…) nor a snapshot");
        }
    }
    Ok(())
}

/// The snapshot `target` names; `None` also when `target` cannot be a snapshot name (a
/// mistyped digest), so that the caller's error names both readings.
fn snapshot_named(
    store: &Store,
    target: &str,
) -> anyhow::Result<Option<infercache_artifact::Snapshot>> {
    match store.snapshot(target) {
        Ok(s) => Ok(s),
        Err(infercache_artifact::ArtifactError::InvalidName { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn pin(store: &Store, target: &str, reason: &str, remove: bool) -> anyhow::Result<()> {
    let digests: Vec<Digest> = match target.parse::<Digest>() {
        Ok(d) => vec![d],
        Err(_) => snapshot_named(store, target)?
            .with_context(|| format!("`{target}` is neither a digest nor a snapshot"))?
            .files
            .values()
            .map(|f| f.blob)
            .collect(),
    };
    for d in digests {
        if remove {
            let had = store.unpin(&d)?;
            println!("{} {d}", if had { "unpinned" } else { "was not pinned:" });
        } else {
            let blake3 = store.pin(&d, reason)?;
            println!("pinned {blake3}");
        }
    }
    Ok(())
}
