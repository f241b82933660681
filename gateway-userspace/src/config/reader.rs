//! Walks the spanned TOML tree one table at a time, turning each known key into a typed value
//! with serde and reporting every problem (wrong type, unknown word, unknown key) instead of
//! stopping at the first, as `#[serde(deny_unknown_fields)]` would. It knows nothing of the
//! schema: the section readers in [`super::raw`] say which keys exist by asking for them.

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::ErrorKind;
use super::source::{Diagnostics, Span};

/// A value as the config wrote it: absent, present but refused (already reported), or present.
/// Keeping "refused" apart from "absent" stops a wrong-typed key from also being reported missing.
#[derive(Clone, Debug, Default)]
pub(crate) enum Field<T> {
    #[default]
    Absent,
    Invalid,
    Present(Spanned<T>),
}

impl<T> Field<T> {
    pub(crate) fn present(&self) -> Option<&Spanned<T>> {
        match self {
            Self::Present(v) => Some(v),
            Self::Absent | Self::Invalid => None,
        }
    }
}

impl<T: Clone> Field<T> {
    /// The value, or `default` when absent or refused (a refusal has been reported already).
    pub(crate) fn value_or(&self, default: T) -> T {
        self.present().map_or(default, |v| v.get_ref().clone())
    }
}

/// An enum written as one of a fixed set of lower-case words (`mode = "report"`).
pub(crate) trait Keyword: Copy + 'static {
    const WORDS: &'static [(&'static str, Self)];
}

/// A table being read. Every key asked for is recorded, so [`Table::finish`] can report the
/// rest as unknown and list the keys that do exist.
pub(crate) struct Table<'a, 'i> {
    entries: &'a DeTable<'i>,
    span: Span,
    /// Dotted path of the table (`kernel`, `deny`), empty at the top level.
    path: String,
    /// How messages name the table: `[kernel]`, `[[deny]]`, `the top level`.
    display: String,
    known: Vec<&'static str>,
}

/// A sub-table as the config wrote it; see [`Field`] for why `Invalid` is kept apart.
pub(crate) enum Section<'a, 'i> {
    Absent,
    Invalid,
    Present(Table<'a, 'i>),
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn root(entries: &'a DeTable<'i>) -> Self {
        Self {
            entries,
            span: 0..0,
            path: String::new(),
            display: "the top level".to_owned(),
            known: Vec::new(),
        }
    }

    /// Where the table starts (its `[header]`); errors about the table as a whole point here.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The dotted path of the table (`kernel`, `deny`), empty at the top level.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// The dotted path of `key` in this table, as messages name it.
    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.entries.get(key)
    }

    /// An optional value of any type serde can read from TOML. For leaves (scalars, lists of
    /// scalars): a table read through serde would skip the unknown-key check, so tables go
    /// through [`Table::table`] and [`Table::tables`].
    pub(crate) fn value<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
        d: &mut Diagnostics,
    ) -> Field<T> {
        let Some(value) = self.get(key) else {
            return Field::Absent;
        };
        // Cloning is cheap at config sizes and leaves the tree intact for the unknown-key pass.
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Field::Present(Spanned::new(value.span(), v)),
            Err(e) => {
                // The error's own span points inside arrays (at the bad element).
                let span = e.span().unwrap_or_else(|| value.span());
                let kind = ErrorKind::WrongType {
                    key: self.key_path(key),
                    reason: e.message().to_owned(),
                };
                d.at(&span, kind);
                Field::Invalid
            }
        }
    }

    /// A value that must be present: absence is reported at the table's header.
    pub(crate) fn required<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
        d: &mut Diagnostics,
    ) -> Option<Spanned<T>> {
        let field = self.value(key, d);
        self.require(key, field, d)
    }

    /// A [`Keyword`] that must be present: absence is reported at the table's header.
    pub(crate) fn required_keyword<K: Keyword>(
        &mut self,
        key: &'static str,
        d: &mut Diagnostics,
    ) -> Option<Spanned<K>> {
        let field = self.keyword(key, d);
        self.require(key, field, d)
    }

    fn require<T>(
        &self,
        key: &'static str,
        field: Field<T>,
        d: &mut Diagnostics,
    ) -> Option<Spanned<T>> {
        match field {
            Field::Present(v) => Some(v),
            Field::Invalid => None,
            Field::Absent => {
                let kind = ErrorKind::Missing {
                    key,
                    table: self.display.clone(),
                };
                d.at(&self.span, kind);
                None
            }
        }
    }

    /// An optional [`Keyword`].
    pub(crate) fn keyword<K: Keyword>(
        &mut self,
        key: &'static str,
        d: &mut Diagnostics,
    ) -> Field<K> {
        let word = match self.value::<String>(key, d) {
            Field::Present(word) => word,
            Field::Absent => return Field::Absent,
            Field::Invalid => return Field::Invalid,
        };
        match K::WORDS.iter().find(|(w, _)| *w == word.get_ref()) {
            Some(&(_, k)) => Field::Present(Spanned::new(word.span(), k)),
            None => {
                let kind = ErrorKind::UnknownKeyword {
                    key: self.key_path(key),
                    value: word.get_ref().clone(),
                    expected: K::WORDS.iter().map(|(w, _)| *w).collect(),
                };
                d.at(&word.span(), kind);
                Field::Invalid
            }
        }
    }

    /// A sub-table, written `[key]`, `key = { ... }` or through dotted keys.
    pub(crate) fn table(&mut self, key: &'static str, d: &mut Diagnostics) -> Section<'a, 'i> {
        let Some(value) = self.get(key) else {
            return Section::Absent;
        };
        let path = self.key_path(key);
        match value.get_ref() {
            DeValue::Table(entries) => Section::Present(Table {
                entries,
                span: value.span(),
                display: format!("[{path}]"),
                path,
                known: Vec::new(),
            }),
            other => {
                let reason = format!("expected a table ([{path}]), found {}", describe(other));
                d.at(&value.span(), ErrorKind::WrongType { key: path, reason });
                Section::Invalid
            }
        }
    }

    /// An array of tables, written `[[key]]` (or `key = [{ ... }, ...]`); absent is empty.
    pub(crate) fn tables(&mut self, key: &'static str, d: &mut Diagnostics) -> Vec<Table<'a, 'i>> {
        match self.tables_field(key, d) {
            Field::Present(tables) => tables.into_inner(),
            Field::Absent | Field::Invalid => Vec::new(),
        }
    }

    /// An array of tables where absent and empty differ (a required list): `Present` carries
    /// the span of the whole array. Elements that are not tables are reported and left out.
    pub(crate) fn tables_field(
        &mut self,
        key: &'static str,
        d: &mut Diagnostics,
    ) -> Field<Vec<Table<'a, 'i>>> {
        let Some(value) = self.get(key) else {
            return Field::Absent;
        };
        let path = self.key_path(key);
        let wrong = |d: &mut Diagnostics, span: &Span, found: &DeValue| {
            let reason = format!(
                "expected an array of tables ([[{path}]]), found {}",
                describe(found)
            );
            d.at(
                span,
                ErrorKind::WrongType {
                    key: path.clone(),
                    reason,
                },
            );
        };
        let DeValue::Array(items) = value.get_ref() else {
            wrong(d, &value.span(), value.get_ref());
            return Field::Invalid;
        };
        let mut tables = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::Table(entries) => tables.push(Table {
                    entries,
                    span: item.span(),
                    path: path.clone(),
                    display: format!("[[{path}]]"),
                    known: Vec::new(),
                }),
                other => wrong(d, &item.span(), other),
            }
        }
        Field::Present(Spanned::new(value.span(), tables))
    }

    /// Reports every key that was not asked for. Call after reading every known key.
    pub(crate) fn finish(self, d: &mut Diagnostics) {
        for (key, _) in self.entries.iter() {
            let name: &str = key.get_ref();
            if self.known.contains(&name) {
                continue;
            }
            let kind = ErrorKind::UnknownKey {
                key: name.to_owned(),
                table: self.display.clone(),
                suggestion: closest(name, self.known.iter().copied()),
                expected: self.known.clone(),
            };
            d.at(&key.span(), kind);
        }
    }
}

impl<'a, 'i> Section<'a, 'i> {
    /// Reads a section whose keys all have defaults: absent reads as `T::default()`; `None`
    /// means the section had the wrong type (reported), so no further checks should run on it.
    pub(crate) fn read_or_default<T: Default>(
        self,
        d: &mut Diagnostics,
        read: impl FnOnce(Table<'a, 'i>, &mut Diagnostics) -> T,
    ) -> Option<T> {
        match self {
            Self::Absent => Some(T::default()),
            Self::Invalid => None,
            Self::Present(t) => Some(read(t, d)),
        }
    }

    /// Reads an optional section: `None` when absent or of the wrong type.
    pub(crate) fn read_optional<T>(
        self,
        d: &mut Diagnostics,
        read: impl FnOnce(Table<'a, 'i>, &mut Diagnostics) -> T,
    ) -> Option<T> {
        match self {
            Self::Absent | Self::Invalid => None,
            Self::Present(t) => Some(read(t, d)),
        }
    }

    /// Reads a section whose absence means something (a required section, or one whose
    /// absence differs from its defaults): `Present` carries the span of its header.
    pub(crate) fn read_field<T>(
        self,
        d: &mut Diagnostics,
        read: impl FnOnce(Table<'a, 'i>, &mut Diagnostics) -> T,
    ) -> Field<T> {
        match self {
            Self::Absent => Field::Absent,
            Self::Invalid => Field::Invalid,
            Self::Present(t) => {
                let span = t.span().clone();
                Field::Present(Spanned::new(span, read(t, d)))
            }
        }
    }
}

/// "a string", "an integer", ... in the words serde uses for type errors.
fn describe(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The known name closest to `key`, if close enough to be a typo: at most two edits, and fewer
/// than half the key's length (so `ab` does not suggest `cd`). Used for keys and for names
/// that reference other entries (a route's pool).
pub(crate) fn closest<'k>(key: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    known
        .into_iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|&(dist, _)| dist <= 2 && dist * 2 < key.chars().count().max(1))
        .min_by_key(|&(dist, _)| dist)
        .map(|(_, k)| k)
}

/// Edit distance over characters, counting a swap of two neighbours as one edit (optimal string
/// alignment): `mdoe` is one typo away from `mode`, not two.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("interfacs", "interfaces"), 1);
        assert_eq!(edit_distance("mdoe", "mode"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
    }

    #[test]
    fn suggestions_only_for_likely_typos() {
        let known = ["enabled", "interfaces", "attach_mode", "pin_root"];
        assert_eq!(closest("interface", known), Some("interfaces"));
        assert_eq!(closest("enabeld", known), Some("enabled"));
        assert_eq!(closest("colour", known), None);
        assert_eq!(closest("", known), None);
        assert_eq!(closest("ab", ["cd"]), None);
        assert_eq!(closest("mdoe", ["name", "mode"]), Some("mode"));
    }
}
