//! What both settings-file test binaries share: the example file's path
//! and a check that a text holds every expected word.

use std::path::PathBuf;

pub fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/foreman.toml")
}

pub fn assert_contains(text: &str, words: &[&str]) {
    for word in words {
        assert!(text.contains(word), "{word:?} missing from:\n{text}");
    }
}
