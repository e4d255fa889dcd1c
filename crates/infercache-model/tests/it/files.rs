//! Checksums guard the real model files.

use std::fs;

use infercache_model::{Embedder, ModelError, ModelFiles};

use crate::model_files;

/// Copies the real model into a fresh directory.
fn copy_model() -> tempfile::TempDir {
    let files = model_files();
    let copy = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        fs::copy(files.dir().join(name), copy.path().join(name)).unwrap();
    }
    copy
}

fn assert_checksum_error(result: Result<impl std::fmt::Debug, ModelError>, want: &str) {
    match result {
        Err(ModelError::Checksum {
            file,
            expected,
            actual,
        }) => {
            assert_eq!(file, want);
            assert_ne!(expected, actual);
        }
        other => panic!("expected a checksum error for {want}, got {other:?}"),
    }
}

#[test]
fn a_tampered_file_is_refused_by_from_dir() {
    let copy = copy_model();
    ModelFiles::from_dir(copy.path()).expect("an exact copy verifies");

    let tokenizer = copy.path().join("tokenizer.json");
    let mut bytes = fs::read(&tokenizer).unwrap();
    bytes.push(b' ');
    fs::write(&tokenizer, bytes).unwrap();
    assert_checksum_error(ModelFiles::from_dir(copy.path()), "tokenizer.json");
}

#[test]
fn a_file_changed_after_verification_is_not_loaded() {
    let copy = copy_model();
    let files = ModelFiles::from_dir(copy.path()).unwrap();
    let config = copy.path().join("config.json");
    let tampered = fs::read_to_string(&config)
        .unwrap()
        .replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 5");
    fs::write(&config, tampered).unwrap();
    assert_checksum_error(Embedder::load(&files), "config.json");
}

#[test]
fn weights_changed_or_cut_short_after_verification_are_not_loaded() {
    // The weights are read a tensor at a time; the digest still covers every byte, so a
    // changed byte inside a tensor and a file cut short are both checksum errors.
    let copy = copy_model();
    let files = ModelFiles::from_dir(copy.path()).unwrap();
    let weights = copy.path().join("model.safetensors");
    let original = fs::read(&weights).unwrap();

    let mut changed = original.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    fs::write(&weights, &changed).unwrap();
    assert_checksum_error(Embedder::load(&files), "model.safetensors");

    fs::write(&weights, &original[..original.len() - 4096]).unwrap();
    assert_checksum_error(Embedder::load(&files), "model.safetensors");

    fs::write(&weights, &original[..4]).unwrap();
    assert_checksum_error(Embedder::load(&files), "model.safetensors");

    fs::write(&weights, &original).unwrap();
    Embedder::load(&files).expect("the file restored loads");
}

#[test]
fn a_missing_file_is_an_io_error() {
    let copy = copy_model();
    fs::remove_file(copy.path().join("model.safetensors")).unwrap();
    let err = ModelFiles::from_dir(copy.path()).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err:?}");
}
