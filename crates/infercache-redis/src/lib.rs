//! The shared Redis tier of infercache.
