//! The data directory names its layout: a new directory is marked with this build's format,
//! and a directory of another layout (an older build's, without the marker) is refused with
//! the directory and the format named, never opened and misread.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use cartdb_datanode::store::{CartStore, DATA_FORMAT, FORMAT_FILE, StoreError};

#[test]
fn a_new_directory_is_marked_and_opens_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    drop(CartStore::open(&path).unwrap());
    let marker = std::fs::read_to_string(path.join(FORMAT_FILE)).unwrap();
    assert_eq!(marker.trim(), DATA_FORMAT);
    drop(CartStore::open(&path).unwrap());
}

#[test]
fn a_directory_of_an_older_layout_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // What an older build leaves: fjall's files, no marker.
    std::fs::write(dir.path().join("version"), b"3").unwrap();
    let error = CartStore::open(dir.path()).err().unwrap();
    assert!(matches!(error, StoreError::Format { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("no format marker"), "{text}");
    assert!(text.contains("not migrated"), "{text}");
    assert!(
        !dir.path().join(FORMAT_FILE).exists(),
        "the old directory was marked"
    );
}

#[test]
fn a_directory_of_another_format_is_refused_with_that_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FORMAT_FILE), "cartdb-data 9\n").unwrap();
    let error = CartStore::open(dir.path()).err().unwrap();
    assert!(error.to_string().contains("\"cartdb-data 9\""), "{error}");
}
