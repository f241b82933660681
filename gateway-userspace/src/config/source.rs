//! The config text being read, byte offsets turned into lines and columns, and the collector
//! every stage pushes its errors into. It owns positions, not messages ([`super::error`]).

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrors, ErrorKind, Location};

/// A byte range in the config text, as the TOML parser reports it.
pub(crate) type Span = Range<usize>;

/// The config file: its path (as given, for messages and for resolving relative paths) and text.
pub(crate) struct SourceFile<'t> {
    path: PathBuf,
    text: &'t str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl<'t> SourceFile<'t> {
    pub(crate) fn new(path: &Path, text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path: path.to_path_buf(),
            text,
            line_starts,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory relative paths in the config resolve against.
    pub(crate) fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }

    /// Line and column (1-based, the column in characters) of a byte offset. Offsets past the
    /// end or inside a character are clamped rather than trusted: this must never panic.
    pub(crate) fn location(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.wrapping_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        Location {
            file: self.path.clone(),
            line: line.max(1),
            column,
        }
    }
}

/// Collects every error of one load.
pub(crate) struct Diagnostics<'s, 't> {
    source: &'s SourceFile<'t>,
    errors: Vec<ConfigError>,
}

impl<'s, 't> Diagnostics<'s, 't> {
    pub(crate) fn new(source: &'s SourceFile<'t>) -> Self {
        Self {
            source,
            errors: Vec::new(),
        }
    }

    pub(crate) fn source(&self) -> &'s SourceFile<'t> {
        self.source
    }

    /// An error in the config file, at the start of `span`.
    pub(crate) fn at(&mut self, span: &Span, kind: ErrorKind) {
        let location = self.source.location(span.start);
        self.errors.push(ConfigError { location, kind });
    }

    /// How many errors have been reported so far: a step compares counts to know whether its
    /// own checks failed, and skips checks that would only echo them.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// An error located elsewhere (in an included file).
    pub(crate) fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// The errors reported so far; for callers that have just reported one and stop.
    pub(crate) fn into_errors(self) -> ConfigErrors {
        ConfigErrors::new(self.errors)
    }

    /// `Ok(value)` when nothing was reported.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors::new(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based_in_characters() {
        let text = "a = 1\r\nbé = \"x\"\n\nlast";
        let src = SourceFile::new(Path::new("c.toml"), text);
        let pos = |offset| {
            let l = src.location(offset);
            (l.line, l.column)
        };
        assert_eq!(pos(0), (1, 1));
        assert_eq!(pos(4), (1, 5));
        assert_eq!(pos(7), (2, 1));
        // `=` after the two-byte `é`: byte 11, character column 4.
        assert_eq!(pos(11), (2, 4));
        // Inside `é`: clamped back to its start.
        assert_eq!(pos(9), (2, 2));
        assert_eq!(pos(text.len()), (4, 5));
        assert_eq!(pos(usize::MAX), (4, 5));
        assert_eq!(src.location(0).file, Path::new("c.toml"));
    }

    #[test]
    fn empty_text() {
        let src = SourceFile::new(Path::new("c.toml"), "");
        let l = src.location(3);
        assert_eq!((l.line, l.column), (1, 1));
    }

    #[test]
    fn dir_of_a_bare_file_name_is_empty() {
        assert_eq!(
            SourceFile::new(Path::new("c.toml"), "").dir(),
            Path::new("")
        );
        assert_eq!(
            SourceFile::new(Path::new("etc/c.toml"), "").dir(),
            Path::new("etc")
        );
    }
}
