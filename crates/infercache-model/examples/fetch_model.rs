//! Fetches the model once into a cache directory and prints that directory's path.
//!
//! `cargo run -p infercache-model --example fetch_model [CACHE_DIR]`; without an argument
//! the cache directory is `infercache_model::default_cache_dir()`. Scripts run this before
//! the tests so that no test pays for the download.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cache_dir = std::env::args_os()
        .nth(1)
        .map_or_else(infercache_model::default_cache_dir, PathBuf::from);
    match infercache_model::ModelFiles::ensure(&cache_dir, true) {
        Ok(files) => {
            println!("{}", files.dir().display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("fetch_model: {error}");
            ExitCode::FAILURE
        }
    }
}
