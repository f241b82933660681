//! Files of one CIDR prefix or address per line, as referenced by `files = [...]` in the
//! `[allow]` and `[[deny]]` sections. This module owns reading and parsing such a file and
//! locating every bad line; resolving the path and reporting the errors is the config's job.
//!
//! Format: one prefix (`192.0.2.0/24`) or address (`192.0.2.7`) per line; `#` starts a comment,
//! whole-line or trailing; blank lines are ignored; surrounding whitespace is trimmed; CRLF line
//! ends and a leading UTF-8 byte order mark are tolerated. Host bits must be zero, as in the
//! config itself ([`Prefix::parse_strict`]).

use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use super::prefix::{Prefix, PrefixError};

/// The largest CIDR file read. Real deny lists (full bogon or drop lists) are a few MiB; the cap
/// keeps a wrong path (a log file, a disk image) from being read whole into memory.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a CIDR file, or one of its lines, was refused.
#[derive(Debug, thiserror::Error)]
pub enum CidrFileError {
    /// The file could not be opened or read (missing, permission denied, an I/O error).
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The path names a directory, device, FIFO or socket: reading it could block or never end.
    #[error("`{}` is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("`{}` is larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    /// One line is not a prefix or address. `line` and `column` are 1-based; the column is that
    /// of the first character of the bad token (or of the first byte that is not UTF-8).
    #[error("{}:{line}:{column}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: LineError,
    },
}

/// What is wrong with one line of a CIDR file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The token is not a valid prefix or address (syntax, length, host bits).
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// The line contains bytes that are not UTF-8 (a binary file, or a legacy encoding).
    #[error("line is not valid UTF-8")]
    NotUtf8,
}

impl CidrFileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::NotAFile { path }
            | Self::TooLarge { path, .. }
            | Self::Line { path, .. } => path,
        }
    }
}

/// Reads and parses a CIDR file. On failure returns every error: either one about the file as a
/// whole, or one per bad line.
pub fn parse_cidr_file(path: &Path) -> Result<Vec<Prefix>, Vec<CidrFileError>> {
    let bytes = read_capped(path).map_err(|e| vec![e])?;
    parse_cidr_text(bytes, path)
}

/// Parses the contents of a CIDR file; `path` is only used to name the file in errors.
pub fn parse_cidr_text(
    text: impl AsRef<[u8]>,
    path: &Path,
) -> Result<Vec<Prefix>, Vec<CidrFileError>> {
    let mut text = text.as_ref();
    // Editors on Windows may write a byte order mark; it is not part of the first token.
    if let Some(rest) = text.strip_prefix(b"\xEF\xBB\xBF") {
        text = rest;
    }
    let mut prefixes = Vec::new();
    let mut errors = Vec::new();
    // Splitting on '\n' alone and trimming afterwards handles both LF and CRLF files.
    for (index, raw_line) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = match std::str::from_utf8(raw_line) {
            Ok(line) => line,
            Err(e) => {
                let valid = &raw_line[..e.valid_up_to()];
                // The prefix up to `valid_up_to` is UTF-8 by definition.
                let column = std::str::from_utf8(valid).map_or(1, |s| s.chars().count() + 1);
                errors.push(CidrFileError::Line {
                    path: path.to_path_buf(),
                    line: line_no,
                    column,
                    reason: LineError::NotUtf8,
                });
                continue;
            }
        };
        let content = line.split_once('#').map_or(line, |(before, _)| before);
        let token = content.trim();
        if token.is_empty() {
            continue;
        }
        match Prefix::parse_strict(token) {
            Ok(p) => prefixes.push(p),
            Err(e) => {
                let leading = content.len() - content.trim_start().len();
                errors.push(CidrFileError::Line {
                    path: path.to_path_buf(),
                    line: line_no,
                    column: content[..leading].chars().count() + 1,
                    reason: e.into(),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(prefixes)
    } else {
        Err(errors)
    }
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`].
fn read_capped(path: &Path) -> Result<Vec<u8>, CidrFileError> {
    let read_err = |source| CidrFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(CidrFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = || CidrFileError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_FILE_BYTES,
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    // The size can change between stat and read (and /proc-style files report 0), so the read
    // itself is capped too.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &[u8]) -> Vec<String> {
        match parse_cidr_text(text, Path::new("list.txt")) {
            Ok(p) => panic!("expected errors, parsed {p:?}"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    fn parsed(text: &str) -> Vec<String> {
        parse_cidr_text(text, Path::new("list.txt"))
            .expect("valid file")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn comments_blanks_whitespace_and_crlf() {
        let text = "# documentation ranges\r\n\
                    192.0.2.0/24\r\n\
                    \r\n\
                    \t198.51.100.7   # one host\r\n\
                    2001:db8::/32#no space before the comment\n\
                    \n";
        assert_eq!(
            parsed(text),
            ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"]
        );
    }

    #[test]
    fn leading_bom_and_mapped_prefixes() {
        assert_eq!(
            parsed("\u{FEFF}10.0.0.0/8\n::ffff:203.0.113.0/120"),
            ["10.0.0.0/8", "203.0.113.0/24"]
        );
        // A BOM anywhere but the start is not whitespace to `trim`: it is part of a bad token.
        assert_eq!(
            errors("10.0.0.0/8\n\u{FEFF}192.0.2.0/24".as_bytes()),
            ["list.txt:2:1: `\u{FEFF}192.0.2.0/24` is not an IP address or CIDR prefix"]
        );
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_lists() {
        assert!(parsed("").is_empty());
        assert!(parsed("# nothing yet\n\n   \n").is_empty());
    }

    #[test]
    fn every_bad_line_is_reported_with_its_column() {
        let text = "10.0.0.0/8\n  10.0.0.1/8 # typo\nnot-an-ip\n\t\t192.0.2.0/33\n2001:db8::/32\n";
        assert_eq!(
            errors(text.as_bytes()),
            [
                "list.txt:2:3: `10.0.0.1/8` has bits set past its prefix length; did you mean `10.0.0.0/8`?",
                "list.txt:3:1: `not-an-ip` is not an IP address or CIDR prefix",
                "list.txt:4:3: prefix length 33 is longer than 32 for this address family",
            ]
        );
    }

    #[test]
    fn two_tokens_on_a_line_are_refused() {
        assert_eq!(
            errors(b"192.0.2.0/24 198.51.100.0/24"),
            ["list.txt:1:1: `192.0.2.0/24 198.51.100.0/24` is not an IP address or CIDR prefix"]
        );
    }

    #[test]
    fn non_utf8_lines_name_line_and_column() {
        assert_eq!(
            errors(b"10.0.0.0/8\n# caf\xe9\n\xff\xfe\n192.0.2.0/24\n"),
            [
                "list.txt:2:6: line is not valid UTF-8",
                "list.txt:3:1: line is not valid UTF-8",
            ]
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // U+3000 (ideographic space) is whitespace: the token starts at the second character.
        assert_eq!(
            errors("\u{3000}10.0.0.1/8".as_bytes()),
            [
                "list.txt:1:2: `10.0.0.1/8` has bits set past its prefix length; did you mean `10.0.0.0/8`?"
            ]
        );
    }

    #[test]
    fn file_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.txt");
        let e = parse_cidr_file(&missing).expect_err("missing file");
        assert!(matches!(&e[..], [CidrFileError::Read { .. }]));
        assert!(
            e[0].to_string()
                .starts_with(&format!("cannot read `{}`: ", missing.display()))
        );
        assert_eq!(e[0].path(), missing);

        let e = parse_cidr_file(dir.path()).expect_err("directory");
        assert_eq!(
            e[0].to_string(),
            format!("`{}` is not a regular file", dir.path().display())
        );

        let good = dir.path().join("good.txt");
        std::fs::write(&good, "192.0.2.0/24\n").expect("write");
        assert_eq!(parse_cidr_file(&good).expect("parses").len(), 1);
    }

    #[test]
    fn too_large_formats() {
        let e = CidrFileError::TooLarge {
            path: "big.txt".into(),
            limit: MAX_FILE_BYTES,
        };
        assert_eq!(e.to_string(), "`big.txt` is larger than 67108864 bytes");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_cidr_text(&bytes, Path::new("fuzz.txt"));
        }
    }
}
