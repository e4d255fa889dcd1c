//! [`run`]: a job from its input file to its output file.
//!
//! 1. The input is read whole, its digest taken, and every record parsed ([`format`](mod@crate::format));
//!    the job's [`JobSpec`] gives its id and its directory, `JOBS/<id>/`.
//! 2. Each input's identity (BLAKE3 of its canonical JSON) marks its first occurrence in
//!    the file: the whole file is de-duplicated, and a repeat takes the first one's value
//!    (from the cache, or by waiting on its computation: the engine's single flight).
//! 3. The records are cut into windows of at most `LOOKUP_WINDOW` (4096) inputs (repeats
//!    included) and `WINDOW_ROUNDS` rounds of `concurrency` calls of `batch_size` first
//!    occurrences. A window is looked up whole at once ([`JobModel::lookup`]: from the
//!    memory tier one `get_many`), and its misses, each distinct one once, are computed in
//!    calls of at most `batch_size` ([`JobModel::rows`], the per-row path: single flight,
//!    stored in every tier), `concurrency` calls at once across the windows in flight. A
//!    call that fails is split in halves until the failing inputs are alone, and those go
//!    to the errors file with their key and reason.
//! 4. Windows finish in input order (two in flight: one computed while the next is looked up): each one's
//!    output and errors are appended to the job's partial files, then the journal records
//!    the totals ([`journal`](crate::journal)). The cache is written before the journal, so after a kill
//!    a resumed job finds every row computed since the last journal entry as a hit: only
//!    rows in flight at the kill are computed again.
//! 5. At the end the partial files are renamed onto the output and errors paths (never a
//!    mix of two jobs' outputs: each job has its own), the journal is removed, and a
//!    summary is kept beside the spec. A later run of the same job starts a fresh pass,
//!    whose rows are all hits.
//!
//! A stop request (SIGINT, SIGTERM) lets the windows in flight finish and be journaled,
//! then returns: nothing done is done again on resume.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures_util::StreamExt as _;
use infercache_backend::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::JobError;
use crate::format::{self, Format, ReadOptions, Record, Writer};
use crate::input::Input;
use crate::journal::{Counts, Entry, Journal};
use crate::model::{JobModel, RowResult, Served};
use crate::spec::{JobSpec, KEY_SCHEME};

/// Inputs in one window at most, repeats included: what one lookup asks the cache for.
/// A re-run of a job is then a few large lookups (from memory, one `get_many` each)
/// rather than one per-row-path call per batch.
pub(crate) const LOOKUP_WINDOW: usize = 4096;

/// First occurrences in one window at most, in rounds of `concurrency` calls of
/// `batch_size`: bounds how long a window's journal entry waits while its misses are
/// computed.
const WINDOW_ROUNDS: usize = 8;

/// Windows in flight at once: while one is computed, the next is looked up.
const WINDOWS_IN_FLIGHT: usize = 2;

/// Whether to resume a job's journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Resume the job when it has a journal, else start it.
    #[default]
    Auto,
    /// Resume the job; refused when the last job writing this output had another spec
    /// (the difference is printed) or there is nothing to resume.
    Resume,
    /// Forget the job's journal and start over (cached rows are still hits).
    Restart,
}

/// A job's settings.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// The input file.
    pub input: PathBuf,
    /// The output file; `None` only warms the cache.
    pub output: Option<PathBuf>,
    /// The errors file [default: `OUTPUT.errors.jsonl`, written when there are errors].
    pub errors: Option<PathBuf>,
    /// The format of the input and the output.
    pub format: Format,
    /// The CSV input column.
    pub column: Option<String>,
    /// The tenant whose entries are used.
    pub tenant: String,
    /// Parameters sent with every row (plain JSON models).
    pub parameters: Option<Map<String, Value>>,
    /// First occurrences per model call.
    pub batch_size: usize,
    /// Calls in flight.
    pub concurrency: usize,
    /// Resume, restart or either.
    pub mode: Mode,
    /// Where jobs keep their journals (`JOBS/<id>/`).
    pub jobs_dir: PathBuf,
    /// Most characters in one input.
    pub max_input_chars: usize,
}

/// What a job reports as it goes.
pub trait Progress: Send + Sync {
    /// The job has `total` inputs, `done` of which were done by earlier attempts.
    fn begin(&self, total: u64, done: &Counts);
    /// The totals after a window.
    fn advance(&self, done: &Counts);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _total: u64, _done: &Counts) {}
    fn advance(&self, _done: &Counts) {}
}

/// The end of a run: the job's totals over every attempt. Printed as one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Inputs in the file (an unreadable record counts as one).
    pub rows: u64,
    /// Distinct readable inputs.
    pub unique: u64,
    /// First occurrences served from the cache.
    pub hits: u64,
    /// Repeats of an earlier input.
    pub duplicates: u64,
    /// First occurrences computed.
    pub computed: u64,
    /// Inputs that failed.
    pub errors: u64,
    /// Successful model calls.
    pub model_calls: u64,
    /// Seconds this run took.
    pub elapsed_s: f64,
    /// The job's id.
    pub job: String,
    /// Inputs done when this run started (journaled by earlier attempts).
    pub resumed_at: u64,
    /// Whether the run stopped before the end (resume it with the same command).
    pub stopped: bool,
    /// In a distributed job: what this worker did before writing the output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<crate::WorkerCounts>,
}

/// What one worker of a distributed job did before the output was written.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkerCounts {
    /// Whether this worker enqueued the job's windows (exactly one worker of a job does).
    pub enqueued: bool,
    /// Windows it computed.
    pub windows: u64,
    /// Of those, windows it took over from another worker.
    pub claimed: u64,
    /// Inputs in them, repeats included.
    pub rows: u64,
    /// First occurrences it computed.
    pub computed: u64,
    /// Inputs that failed (recorded for the writing pass, which reports them without
    /// computing them again).
    pub errors: u64,
    /// Successful model calls it made.
    pub model_calls: u64,
}

impl Summary {
    /// A distributed job's worker stopped (SIGINT, SIGTERM) before the job was drained.
    pub fn stopped(job: &crate::JobId, worker: WorkerCounts) -> Self {
        Self {
            rows: 0,
            unique: 0,
            hits: 0,
            duplicates: 0,
            computed: worker.computed,
            errors: worker.errors,
            model_calls: worker.model_calls,
            elapsed_s: 0.0,
            job: job.to_string(),
            resumed_at: 0,
            stopped: true,
            worker: Some(worker),
        }
    }
}

/// Runs the job `options` describes with `model`, until it is done or `stop` is set.
///
/// # Errors
/// [`JobError::Input`] for an unreadable input; [`JobError::Changed`] and
/// [`JobError::NothingToResume`] under [`Mode::Resume`]; [`JobError::Io`] for the job's
/// files. A failing input is not an error: it goes to the errors file.
pub async fn run(
    model: &dyn JobModel,
    options: &JobOptions,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Summary, JobError> {
    let started = Instant::now();
    let Plan {
        spec,
        records,
        firsts,
        unique,
        total,
    } = Plan::read(model, options).await?;

    let job = JobDir::prepare(&spec, options)?;
    let (mut journal, last) =
        Journal::open(&job.path("journal")).map_err(|e| JobError::io("opening the journal", e))?;
    let last = last.unwrap_or_default();
    if last.records > records.len() {
        return Err(JobError::Input(format!(
            "the journal of job {} is past the end of the input (a bug or a foreign file)",
            spec.id()
        )));
    }
    let mut files = Partial::open(&job, &last, options.output.is_some())?;
    let mut writer = Writer::new(options.format, &spec.model, last.columns.clone());
    let mut counts = last.counts;
    let resumed_at = counts.rows;
    if resumed_at > 0 {
        tracing::info!(job = %spec.id(), done = resumed_at, total, "resuming");
    }
    progress.begin(total, &counts);

    let calls_at_start = model.model_calls();
    let calls_before = counts.model_calls;
    let batch = options.batch_size.max(1);
    let concurrency = options.concurrency.max(1);
    let calls = Calls::new(model.rows_in_flight(concurrency));
    let windows = windows(
        &firsts,
        last.records,
        batch
            .saturating_mul(concurrency)
            .saturating_mul(WINDOW_ROUNDS),
        LOOKUP_WINDOW.max(batch),
    );
    // How many of this run's windows are done: a window's repeats of inputs still
    // computing in the window before wait for it.
    let (finished, finished_rx) = tokio::sync::watch::channel(0usize);
    let work = windows
        .into_iter()
        .enumerate()
        .take_while(|_| !stop.load(Ordering::SeqCst))
        .map(|(k, range)| {
            let inputs = inputs_in(&records, range.clone());
            let window_firsts: Vec<bool> =
                firsts[range.clone()].iter().flatten().copied().collect();
            let (calls, finished) = (&calls, &finished);
            let mut before = finished_rx.clone();
            async move {
                let earlier = async move {
                    let _ = before.wait_for(|done| *done >= k).await;
                };
                let results =
                    window_rows(model, &inputs, &window_firsts, batch, calls, earlier).await;
                finished.send_modify(|done| *done = (*done).max(k + 1));
                (range, inputs, results)
            }
        });
    let mut done = futures_util::stream::iter(work).buffered(WINDOWS_IN_FLIGHT);
    let mut next = last.records;
    while let Some((range, inputs, results)) = done.next().await {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut results = inputs.iter().zip(results);
        for (offset, record) in records[range.clone()].iter().enumerate() {
            let i = range.start + offset;
            let Ok(record_inputs) = &record.inputs else {
                let reason = record.inputs.as_ref().err().map_or("", String::as_str);
                Writer::error(&mut err, record, None, reason);
                counts.errors += 1;
                counts.rows += 1;
                continue;
            };
            let mine: Vec<(&Input, RowResult)> =
                results.by_ref().take(record_inputs.len()).collect();
            let mut outputs = Vec::with_capacity(mine.len());
            let mut failed: Option<(&Input, String)> = None;
            for (j, (input, result)) in mine.into_iter().enumerate() {
                counts.rows += 1;
                match result {
                    Ok((value, served)) => {
                        match (firsts[i][j], served) {
                            (false, _) => counts.duplicates += 1,
                            (true, Served::Hit) => counts.hits += 1,
                            (true, Served::Computed) => counts.computed += 1,
                        }
                        outputs.push(value);
                    }
                    Err(reason) => {
                        counts.errors += 1;
                        failed.get_or_insert((input, reason));
                    }
                }
            }
            match failed {
                Some((input, reason)) => Writer::error(&mut err, record, Some(input), &reason),
                None if files.output.is_some() => {
                    writer.output(&mut out, record, record_inputs, &outputs);
                }
                None => {}
            }
        }
        next = range.end;
        counts.model_calls = calls_before + (model.model_calls() - calls_at_start);
        files.append(&out, &err)?;
        // The rows are in the cache (the model call returned after storing them) and in
        // the partial files: now the journal may say so.
        journal
            .append(&Entry {
                records: next,
                output: files.output_len,
                errors: files.errors_len,
                counts,
                columns: writer.columns.clone(),
            })
            .map_err(|e| JobError::io("appending to the journal", e))?;
        progress.advance(&counts);
    }
    drop(done);
    let stopped = next < records.len();
    files.sync()?;
    journal
        .sync()
        .map_err(|e| JobError::io("syncing the journal", e))?;
    let summary = Summary {
        rows: total,
        unique,
        hits: counts.hits,
        duplicates: counts.duplicates,
        computed: counts.computed,
        errors: counts.errors,
        model_calls: counts.model_calls,
        elapsed_s: started.elapsed().as_secs_f64(),
        job: spec.id().to_string(),
        resumed_at,
        stopped,
        worker: None,
    };
    if !stopped {
        files.finish(options, counts.errors)?;
        let journal_path = journal.path().to_owned();
        drop(journal);
        remove_if_present(&journal_path)?;
        let text = serde_json::to_vec_pretty(&summary).expect("a summary always serializes");
        fs::write(job.path("summary.json"), text)
            .map_err(|e| JobError::io("writing the summary", e))?;
    }
    Ok(summary)
}

/// A job as read from its input: the spec, every record, and which inputs are first
/// occurrences. Reading writes nothing.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) spec: JobSpec,
    pub(crate) records: Vec<Record>,
    /// By record and input: whether it is the input's first occurrence in the file.
    pub(crate) firsts: Vec<Vec<bool>>,
    /// Distinct readable inputs.
    pub(crate) unique: u64,
    /// Inputs in the file (an unreadable record counts as one).
    pub(crate) total: u64,
}

impl Plan {
    /// Reads and parses `options.input` for `model` (off the async workers).
    pub(crate) async fn read(model: &dyn JobModel, options: &JobOptions) -> Result<Self, JobError> {
        let bytes = tokio::fs::read(&options.input)
            .await
            .map_err(|e| JobError::io(format!("reading {}", options.input.display()), e))?;
        let identity = model.identity();
        let spec = JobSpec {
            input_digest: blake3::hash(&bytes).to_hex().to_string(),
            format: options.format,
            column: options.column.clone(),
            model: identity.name,
            backend: identity.backend,
            version: identity.version,
            digest: identity.digest,
            tenant: options.tenant.clone(),
            parameters: options.parameters.clone(),
            key_scheme: KEY_SCHEME,
        };
        let read = ReadOptions {
            format: options.format,
            column: options.column.clone(),
            kind: model.input_kind(),
            max_input_chars: options.max_input_chars,
        };
        let (records, firsts, unique) = tokio::task::spawn_blocking(move || {
            let records = format::read(&bytes, &read)?;
            let (firsts, unique) = first_occurrences(&records);
            Ok::<_, JobError>((records, firsts, unique))
        })
        .await
        .map_err(|e| JobError::io("reading the input", io::Error::other(e)))??;
        let total = records.iter().map(|r| inputs_of(r) as u64).sum();
        Ok(Self {
            spec,
            records,
            firsts,
            unique,
            total,
        })
    }
}

/// The readable inputs of the records in `range`, repeats included, in order.
pub(crate) fn inputs_in(records: &[Record], range: std::ops::Range<usize>) -> Vec<Input> {
    records[range]
        .iter()
        .filter_map(|r| r.inputs.as_ref().ok())
        .flatten()
        .cloned()
        .collect()
}

/// Each input's first-occurrence flag, by record and input, and the number of distinct
/// readable inputs. An input is its canonical form, as in its cache key: a JSON row's
/// key order and spacing do not matter.
fn first_occurrences(records: &[Record]) -> (Vec<Vec<bool>>, u64) {
    let mut seen: HashSet<&Input> = HashSet::with_capacity(records.len());
    let firsts = records
        .iter()
        .map(|r| match &r.inputs {
            Err(_) => Vec::new(),
            Ok(inputs) => inputs.iter().map(|input| seen.insert(input)).collect(),
        })
        .collect();
    (firsts, seen.len() as u64)
}

fn inputs_of(record: &Record) -> usize {
    record.inputs.as_ref().map_or(1, Vec::len)
}

/// The records from `start` cut into windows of at most `max_firsts` first occurrences and
/// `max_inputs` inputs (a record is never cut).
pub(crate) fn windows(
    firsts: &[Vec<bool>],
    start: usize,
    max_firsts: usize,
    max_inputs: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut begin, mut new, mut inputs) = (start, 0, 0);
    for (i, flags) in firsts.iter().enumerate().skip(start) {
        let fresh = flags.iter().filter(|f| **f).count();
        let n = flags.len();
        if i > begin && (new + fresh > max_firsts || inputs + n > max_inputs) {
            out.push(begin..i);
            (begin, new, inputs) = (i, 0, 0);
        }
        new += fresh;
        inputs += n;
    }
    if begin < firsts.len() {
        out.push(begin..firsts.len());
    }
    out
}

/// The model calls of a job (or of a worker's windows): `concurrency` at once, and
/// whether windows are looked up first.
#[derive(Debug)]
pub(crate) struct Calls {
    permits: Semaphore,
    lookups: Lookups,
}

impl Calls {
    pub(crate) fn new(concurrency: usize) -> Self {
        Self {
            permits: Semaphore::new(concurrency),
            lookups: Lookups::default(),
        }
    }
}

/// Whether a window's inputs are looked up whole before its misses go to the model.
///
/// The lookup only batches what the model calls would look up anyway (the per-row path
/// serves every cached row as a hit), so it is skipped while it finds nothing, as in a
/// job's first run, where each row would otherwise be looked up twice: once here, once on
/// the path. A hit among the first occurrences a window computed turns it back on.
#[derive(Debug)]
struct Lookups(AtomicBool);

impl Default for Lookups {
    fn default() -> Self {
        Self(AtomicBool::new(true))
    }
}

impl Lookups {
    fn wanted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn found(&self, hits: bool) {
        self.0.store(hits, Ordering::Relaxed);
    }
}

/// The rows of a window's `inputs` (`firsts`: whether each is its input's first
/// occurrence in the file): one lookup of them all (unless `lookups` says it finds
/// nothing), then the misses, each distinct one once, computed in calls of at most
/// `batch`, each call holding one of `calls`' permits.
///
/// A repeat whose first occurrence is in an earlier window but is not cached yet (that
/// window still computing it) is computed only once `earlier` completes: it is then
/// found, rather than computed here too (or here first, leaving the first occurrence a
/// hit). In a distributed job windows finish anywhere, and `earlier` is ready at once:
/// the Redis tier's leases keep the repeat from being computed twice.
pub(crate) async fn window_rows(
    model: &dyn JobModel,
    inputs: &[Input],
    firsts: &[bool],
    batch: usize,
    calls: &Calls,
    earlier: impl Future<Output = ()>,
) -> Vec<RowResult> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let batch = batch.max(1);
    let lookups = &calls.lookups;
    let found = if lookups.wanted() {
        let found = model.lookup(inputs).await;
        lookups.found(found.iter().any(Option::is_some));
        found
    } else {
        vec![None; inputs.len()]
    };
    // Each distinct missing input once, in order of first appearance in the window; those
    // first seen in this window go first.
    let mut now: Vec<Input> = Vec::new();
    let mut later: Vec<Input> = Vec::new();
    let mut slot_of: HashMap<&Input, (bool, usize)> = HashMap::new();
    let slots: Vec<Option<(bool, usize)>> = found
        .iter()
        .zip(inputs.iter().zip(firsts))
        .map(|(hit, (input, first))| {
            hit.is_none().then(|| {
                *slot_of.entry(input).or_insert_with(|| {
                    let list = if *first { &mut now } else { &mut later };
                    list.push(input.clone());
                    (*first, list.len() - 1)
                })
            })
        })
        .collect();
    let computed_now = compute_all(model, &now, batch, &calls.permits).await;
    if computed_now
        .iter()
        .any(|r| matches!(r, Ok((_, Served::Hit))))
    {
        lookups.found(true);
    }
    let computed_later = if later.is_empty() {
        Vec::new()
    } else {
        earlier.await;
        compute_all(model, &later, batch, &calls.permits).await
    };
    let mut taken = (vec![false; now.len()], vec![false; later.len()]);
    found
        .into_iter()
        .zip(slots)
        .map(|(hit, slot)| match (hit, slot) {
            (Some(value), _) => Ok((value, Served::Hit)),
            (None, Some((first, slot))) => {
                let (results, taken) = if first {
                    (&computed_now, &mut taken.0)
                } else {
                    (&computed_later, &mut taken.1)
                };
                // A repeat of an input missing earlier in the window took its value.
                let again = std::mem::replace(&mut taken[slot], true);
                match results[slot].clone() {
                    Ok((value, _)) if again => Ok((value, Served::Hit)),
                    other => other,
                }
            }
            (None, None) => unreachable!("every miss has a slot"),
        })
        .collect()
}

/// The rows of `inputs` in calls of at most `batch`, each holding one of `calls`' permits.
async fn compute_all(
    model: &dyn JobModel,
    inputs: &[Input],
    batch: usize,
    calls: &Semaphore,
) -> Vec<RowResult> {
    futures_util::stream::iter(inputs.chunks(batch))
        .map(|chunk| async move {
            let _permit = calls
                .acquire()
                .await
                .expect("the semaphore is never closed");
            compute(model, chunk).await
        })
        .buffered(inputs.len().div_ceil(batch).max(1))
        .flat_map(futures_util::stream::iter)
        .collect()
        .await
}

/// The rows of `inputs`; a failing call is split in halves until each failing input is
/// alone, so that one bad input fails only itself.
pub(crate) fn compute<'a>(
    model: &'a dyn JobModel,
    inputs: &'a [Input],
) -> BoxFuture<'a, Vec<RowResult>> {
    Box::pin(async move {
        match model.rows(inputs).await {
            Ok(rows) => rows,
            Err(reason) if inputs.len() == 1 => vec![Err(reason)],
            Err(reason) => {
                tracing::debug!(inputs = inputs.len(), %reason, "a batch failed: splitting it");
                let (a, b) = inputs.split_at(inputs.len() / 2);
                let mut rows = compute(model, a).await;
                rows.extend(compute(model, b).await);
                rows
            }
        }
    })
}

/// A job's directory, and the pointer from its output to it.
#[derive(Debug)]
struct JobDir {
    dir: PathBuf,
}

impl JobDir {
    /// Decides per `options.mode` whether the job `spec` resumes or starts, and records it
    /// as the last job for its output.
    fn prepare(spec: &JobSpec, options: &JobOptions) -> Result<Self, JobError> {
        let id = spec.id();
        let dir = options.jobs_dir.join(id.as_str());
        let io = |what: &str, e| JobError::io(format!("{what} in {}", dir.display()), e);
        let journal = dir.join("journal");
        let pointer = pointer_path(options);
        let previous = fs::read_to_string(&pointer)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|p| p != id.as_str());
        let previous_spec = previous.as_ref().and_then(|p| {
            let text = fs::read(options.jobs_dir.join(p).join("spec.json")).ok()?;
            serde_json::from_slice::<JobSpec>(&text).ok()
        });
        match options.mode {
            Mode::Restart => {
                for name in ["journal", "output.partial", "errors.partial"] {
                    remove_if_present(&dir.join(name))?;
                }
            }
            Mode::Resume if !journal.exists() && !dir.join("spec.json").exists() => {
                return Err(match previous_spec {
                    Some(old) => JobError::Changed {
                        previous: previous.unwrap_or_default(),
                        diff: old.diff(spec),
                    },
                    None => JobError::NothingToResume,
                });
            }
            Mode::Auto if !journal.exists() => {
                if let Some(old) = previous_spec {
                    tracing::info!(
                        previous = previous.as_deref().unwrap_or_default(),
                        job = %id,
                        changed = %old.diff(spec).join("; "),
                        "the configuration changed since the last job for this output: starting a new job"
                    );
                }
            }
            _ => {}
        }
        fs::create_dir_all(&dir).map_err(|e| io("creating the job directory", e))?;
        let text = serde_json::to_vec_pretty(spec).expect("a spec always serializes");
        fs::write(dir.join("spec.json"), text).map_err(|e| io("writing the spec", e))?;
        if let Some(parent) = pointer.parent() {
            fs::create_dir_all(parent).map_err(|e| io("creating the outputs index", e))?;
        }
        fs::write(&pointer, id.as_str()).map_err(|e| io("writing the outputs index", e))?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Where the id of the last job for this output (or, warming, this input) is kept.
fn pointer_path(options: &JobOptions) -> PathBuf {
    let target = options.output.as_ref().unwrap_or(&options.input);
    let absolute = std::path::absolute(target).unwrap_or_else(|_| target.clone());
    let hash = blake3::hash(absolute.as_os_str().as_encoded_bytes());
    options.jobs_dir.join("outputs").join(&hash.to_hex()[..32])
}

fn remove_if_present(path: &Path) -> Result<(), JobError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JobError::io(format!("removing {}", path.display()), e)),
    }
}

/// The job's partial output and errors files, cut to what the journal records.
#[derive(Debug)]
struct Partial {
    output: Option<(File, PathBuf)>,
    errors: (File, PathBuf),
    output_len: u64,
    errors_len: u64,
}

impl Partial {
    fn open(job: &JobDir, last: &Entry, with_output: bool) -> Result<Self, JobError> {
        let open = |name: &str, len: u64| {
            let path = job.path(name);
            let io = |e| JobError::io(format!("opening {}", path.display()), e);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            // Longer than the journal says: a window written but not journaled before a
            // kill, cut off here. Shorter: the file was damaged or replaced.
            if file.metadata().map_err(io)?.len() < len {
                return Err(JobError::Input(format!(
                    "{} is shorter than the job's journal says; run with --restart",
                    path.display()
                )));
            }
            file.set_len(len).map_err(io)?;
            Ok::<_, JobError>((file, path))
        };
        Ok(Self {
            output: if with_output {
                Some(open("output.partial", last.output)?)
            } else {
                None
            },
            errors: open("errors.partial", last.errors)?,
            output_len: last.output,
            errors_len: last.errors,
        })
    }

    /// Appends a window's output and errors. Small appends from the one writer task, in
    /// input order.
    fn append(&mut self, out: &[u8], err: &[u8]) -> Result<(), JobError> {
        if let Some((file, path)) = &mut self.output {
            file.write_all(out)
                .map_err(|e| JobError::io(format!("writing {}", path.display()), e))?;
            self.output_len += out.len() as u64;
        }
        let (file, path) = &mut self.errors;
        file.write_all(err)
            .map_err(|e| JobError::io(format!("writing {}", path.display()), e))?;
        self.errors_len += err.len() as u64;
        Ok(())
    }

    fn sync(&self) -> Result<(), JobError> {
        for (file, path) in self.output.iter().chain([&self.errors]) {
            file.sync_data()
                .map_err(|e| JobError::io(format!("syncing {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Moves the partial files onto the job's output and errors paths.
    fn finish(self, options: &JobOptions, errors: u64) -> Result<(), JobError> {
        let output = match (self.output, &options.output) {
            (Some((_, partial)), Some(output)) => {
                place(&partial, output)?;
                Some(output)
            }
            _ => None,
        };
        let errors_path = options.errors.clone().or_else(|| {
            (errors > 0)
                .then(|| output.as_ref().map(|o| append_ext(o, "errors.jsonl")))
                .flatten()
        });
        let (_, partial_err) = self.errors;
        match errors_path {
            Some(path) => place(&partial_err, &path),
            None => remove_if_present(&partial_err),
        }
    }
}

fn append_ext(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Renames `from` onto `to`, copying when they are on different file systems.
fn place(from: &Path, to: &Path) -> Result<(), JobError> {
    let io = |e| JobError::io(format!("writing {}", to.display()), e);
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let tmp = append_ext(to, "infercache-tmp");
    fs::copy(from, &tmp).map_err(io)?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, to).map_err(io)?;
    remove_if_present(from)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn record(line: usize, inputs: &[&str]) -> Record {
        Record {
            line,
            key: line.to_string(),
            inputs: Ok(inputs.iter().map(|s| Input::text(s)).collect()),
        }
    }

    #[test]
    fn windows_hold_at_most_a_batch_of_first_occurrences_and_repeats_ride_along() {
        let records: Vec<Record> = ["a", "b", "a", "c", "a", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, s)| record(i + 1, &[s]))
            .collect();
        let (firsts, unique) = first_occurrences(&records);
        assert_eq!(unique, 5);
        assert_eq!(windows(&firsts, 0, 2, 16), [0..3, 3..6, 6..7]);
        assert_eq!(windows(&firsts, 4, 2, 16), vec![(4..7)]);
        assert_eq!(windows(&firsts, 0, 2, 2), [0..2, 2..4, 4..6, 6..7]);
        assert_eq!(
            windows(&firsts, 7, 2, 16),
            Vec::<std::ops::Range<usize>>::new()
        );
    }
}
