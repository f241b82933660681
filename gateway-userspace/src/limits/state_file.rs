//! The quota state file: every quota counter as JSON, written atomically (a temporary file in
//! the same directory, synced, then renamed over the old one) so a crash leaves the old file
//! or the new one, never half of one.
//!
//! A file that cannot be read as a state file is not fatal: the gateway starts with empty
//! counters, logs an error, and moves the file aside (`<name>.corrupt`) so the next write does
//! not destroy what an operator may want to inspect. Quotas are accounting; refusing to start
//! would take the whole gateway down, kernel protection included, over a damaged ledger.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::quota::Entry;

/// The current layout.
const VERSION: u64 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u64,
    entries: Vec<Entry>,
}

/// Why a state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read the quota state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the quota state file {path} is not a state file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the quota state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the counters in `path`; a missing file is no counters.
pub fn read(path: &Path) -> Result<Vec<Entry>, StateFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateFileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |reason: String| StateFileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file: File = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != VERSION {
        return Err(corrupt(format!(
            "layout version {} (this gateway reads {VERSION})",
            file.version
        )));
    }
    Ok(file.entries)
}

/// Reads `path`, or on a corrupt file moves it aside to `<path>.corrupt` and returns the
/// error with no counters (the caller logs it).
pub fn read_or_set_aside(path: &Path) -> (Vec<Entry>, Option<StateFileError>) {
    match read(path) {
        Ok(entries) => (entries, None),
        Err(e @ StateFileError::Corrupt { .. }) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".corrupt");
            let _ = std::fs::rename(path, PathBuf::from(aside));
            (Vec::new(), Some(e))
        }
        Err(e) => (Vec::new(), Some(e)),
    }
}

/// Writes `entries` to `path` atomically, readable by the owner only.
pub fn write(path: &Path, entries: Vec<Entry>) -> Result<(), StateFileError> {
    let err = |source| StateFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec(&File {
        version: VERSION,
        entries,
    })
    .map_err(|e| err(std::io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?
    };
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::quota::Usage;

    fn entry() -> Entry {
        Entry {
            quota: "daily".into(),
            key: "acme".into(),
            window: 1_795_305_600,
            usage: Usage {
                calls: 3,
                bytes: 120,
            },
        }
    }

    #[test]
    fn written_then_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("quotas.json");
        assert_eq!(read(&path).expect("missing is empty"), vec![]);
        write(&path, vec![entry()]).expect("write");
        assert_eq!(read(&path).expect("read"), vec![entry()]);
        assert!(!dir.path().join("quotas.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("quotas.json");
        std::fs::write(&path, b"{\"version\":1,\"entries\":[{\"quota\":").expect("write");
        let (entries, error) = read_or_set_aside(&path);
        assert!(entries.is_empty());
        let msg = error.expect("reported").to_string();
        assert!(msg.contains("not a state file"), "{msg}");
        assert!(!path.exists());
        assert!(dir.path().join("quotas.json.corrupt").exists());
        std::fs::write(&path, b"{\"version\":7,\"entries\":[]}").expect("write");
        assert!(matches!(read(&path), Err(StateFileError::Corrupt { .. })));
    }
}
