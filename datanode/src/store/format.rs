//! The data directory's format marker, [`super::FORMAT_FILE`]: a directory of another layout
//! is refused by name, and a new, empty one is marked, durably, with this build's.

use std::path::Path;

use super::{DATA_FORMAT, FORMAT_FILE, StoreError};

/// Refuses a data directory of another layout, and marks a new (empty) one with this one.
pub(super) fn check_format(path: &Path) -> Result<(), StoreError> {
    let marker = path.join(FORMAT_FILE);
    let marker_error = |source| StoreError::Marker {
        path: marker.clone(),
        source,
    };
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == DATA_FORMAT => Ok(()),
        Ok(found) => Err(StoreError::Format {
            path: path.to_owned(),
            found: found.trim().to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let empty = match std::fs::read_dir(path) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(marker_error(e)),
            };
            if !empty {
                return Err(StoreError::Format {
                    path: path.to_owned(),
                    found: "cartdb-data 2 or older (no format marker)".to_owned(),
                });
            }
            std::fs::create_dir_all(path).map_err(marker_error)?;
            write_marker(&marker).map_err(marker_error)
        }
        Err(e) => Err(marker_error(e)),
    }
}

/// Writes the format marker durably (file and directory entry).
fn write_marker(marker: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(marker)?;
    std::io::Write::write_all(&mut &file, format!("{DATA_FORMAT}\n").as_bytes())?;
    file.sync_all()?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
