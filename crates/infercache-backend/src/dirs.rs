//! Where infercache keeps its files.

use std::path::PathBuf;

/// The default cache directory: `$INFERCACHE_HOME`, else `$XDG_CACHE_HOME/infercache`, else
/// `$HOME/.cache/infercache`, else `infercache` in the system temporary directory. Empty
/// variables count as unset. The built-in model's files, the disk tier and a managed
/// Redis's data live under it unless configured elsewhere.
pub fn default_cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var("INFERCACHE_HOME") {
        return home;
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return xdg.join("infercache");
    }
    if let Some(home) = var("HOME") {
        return home.join(".cache").join("infercache");
    }
    std::env::temp_dir().join("infercache")
}
