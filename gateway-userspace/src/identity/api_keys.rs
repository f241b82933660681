//! API (subscription) keys: the key file, the in-memory store and its lookup, extraction of the
//! presented key from a request, and the helpers the CLI uses to make and hash keys.
//!
//! The key file stores SHA-256 digests of keys, never the keys: a leaked file (backup, support
//! bundle, config repository) then grants nothing. Keys are random 256-bit values, so a plain
//! unsalted SHA-256 is enough: there is no dictionary to grind, unlike passwords.
//!
//! Nothing here formats a key: errors and matches carry the key's id only, and the types that
//! hold a presented key ([`PresentedKey`]) have a hand-written `Debug` that omits it.
//!
//! Not yet wired into the proxy's request path, the config or the CLI (issue 4).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use toml::value::{Datetime, Offset};

use crate::config::Location;
use crate::config::source::SourceFile;

/// The header a client sends its key in, unless configured otherwise; the name Azure API
/// Management uses, so existing clients work unchanged.
pub const DEFAULT_HEADER_NAME: HeaderName = HeaderName::from_static("ocp-apim-subscription-key");

/// The query parameter read when the header is absent, unless configured otherwise.
pub const DEFAULT_QUERY_PARAM: &str = "subscription-key";

/// The prefix of every hash in the key file; names the algorithm so another can be added later.
pub const HASH_PREFIX: &str = "sha256:";

/// Presented keys longer than this are refused without being hashed: generated keys are 43
/// characters, and no legitimate key needs more than a few hundred.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest key id: ids appear in logs and metric labels.
pub const MAX_ID_LEN: usize = 64;

/// The longest product or API (route) name in a scope, as the config allows for names.
const MAX_NAME_LEN: usize = 32;

/// The longest owner text.
const MAX_OWNER_LEN: usize = 256;

// ---------------------------------------------------------------------------------------------
// Digests
// ---------------------------------------------------------------------------------------------

/// A SHA-256 digest of a key. Equality is constant-time (see [`KeyStore::lookup`] for why the
/// store may still index by digest).
#[derive(Clone, Copy, Eq)]
struct KeyDigest([u8; 32]);

impl KeyDigest {
    fn of(key: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    fn to_hex(self) -> String {
        let mut s = String::with_capacity(HASH_PREFIX.len() + 64);
        s.push_str(HASH_PREFIX);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl PartialEq for KeyDigest {
    /// Constant-time: every byte is compared, whatever the first difference.
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl std::hash::Hash for KeyDigest {
    /// Consistent with `eq`: equal digests have equal bytes. The map's SipHash does not branch
    /// on the bytes it hashes.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// Compares two digests in time independent of their contents.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// `sha256:<64 lowercase hex>` of a key: the form the key file stores. For the CLI.
pub fn hash_key(key: &str) -> String {
    KeyDigest::of(key.as_bytes()).to_hex()
}

/// A new key: 32 random bytes from the operating system, base64url without padding (43
/// characters from `A-Z a-z 0-9 - _`, safe in headers and query strings unencoded).
pub fn generate_key() -> String {
    try_generate_key().expect("the operating system's random number generator failed")
}

/// [`generate_key`], reporting a failure of the random number generator instead of panicking.
pub fn try_generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(crate::identity::encoding::b64url_encode(&bytes))
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// What a key may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every API behind the gateway.
    All,
    /// The routes of one product (a named group of routes).
    Product(Arc<str>),
    /// One API: one route, by name.
    Api(Arc<str>),
}

impl Scope {
    /// Whether the key may call `route`, which belongs to `product` (if any).
    pub fn allows(&self, route: &str, product: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Product(p) => product == Some(&**p),
            Self::Api(r) => route == &**r,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Product(p) => write!(f, "product `{p}`"),
            Self::Api(r) => write!(f, "api `{r}`"),
        }
    }
}

/// Which of a key's two values was presented; for rotation metrics (when no request uses the
/// old value any more, it can be removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    Primary,
    Secondary,
}

impl Slot {
    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key of the key file.
#[derive(Clone)]
pub struct KeyEntry {
    id: Arc<str>,
    owner: Arc<str>,
    primary: KeyDigest,
    secondary: Option<KeyDigest>,
    scope: Scope,
    expires: Option<SystemTime>,
    /// Where the entry starts in its file, for messages.
    line: usize,
}

impl KeyEntry {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    pub fn has_secondary(&self) -> bool {
        self.secondary.is_some()
    }

    /// The line of the entry's `[[keys]]` header.
    pub fn line(&self) -> usize {
        self.line
    }
}

impl fmt::Debug for KeyEntry {
    /// Hashes are not secrets, but there is no reason to print them either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("scope", &self.scope)
            .field("has_secondary", &self.secondary.is_some())
            .field("expires", &self.expires)
            .field("line", &self.line)
            .finish()
    }
}

/// A parsed key file.
#[derive(Clone, Debug)]
pub struct KeyFile {
    path: PathBuf,
    entries: Vec<KeyEntry>,
}

impl KeyFile {
    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileErrors> {
        match std::fs::read(path) {
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => Self::parse(text, path),
                Err(e) => {
                    let valid = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
                    let mut cx = Cx::new(path, &valid);
                    cx.at(valid.len(), KeyFileErrorKind::NotUtf8);
                    Err(cx.into_errors())
                }
            },
            Err(e) => Err(KeyFileErrors::new(vec![KeyFileError {
                location: Location {
                    file: path.to_path_buf(),
                    line: 1,
                    column: 1,
                },
                kind: KeyFileErrorKind::Read(e.to_string()),
            }])),
        }
    }

    /// Parses key file text as if read from `path` (named in messages only).
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileErrors> {
        let mut cx = Cx::new(path, text);
        let (doc, syntax_errors) = DeTable::parse_recoverable(text);
        // As in the config: errors after the first syntax error are often its echoes.
        if let Some(first) = syntax_errors
            .iter()
            .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))
        {
            let at = first.span().map_or(0, |s| s.start);
            cx.at(at, KeyFileErrorKind::Syntax(first.message().to_owned()));
            return Err(cx.into_errors());
        }
        let entries = read_file(doc.get_ref(), &mut cx);
        if cx.errors.is_empty() {
            Ok(Self {
                path: path.to_path_buf(),
                entries,
            })
        } else {
            Err(cx.into_errors())
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// The keys of one key file, ready for lookups. Immutable: a reload builds a new store and
/// swaps it in ([`SharedKeyStore`]).
pub struct KeyStore {
    entries: Vec<KeyEntry>,
    /// Every primary and secondary digest, to its entry and slot.
    by_digest: HashMap<KeyDigest, (usize, Slot)>,
}

/// A successful lookup. Holds no secret: log it freely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMatch {
    pub id: Arc<str>,
    pub owner: Arc<str>,
    pub scope: Scope,
    pub slot: Slot,
}

/// Why a presented key was refused. Names the key's id at most, never the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key in the store has this value.
    #[error("unknown API key")]
    Unknown,
    /// The key exists but its `expires` has passed.
    #[error("API key `{id}` has expired")]
    Expired { id: Arc<str> },
}

impl KeyStore {
    /// A store of the keys of a parsed file; the parser has refused duplicate ids and hashes.
    pub fn new(file: KeyFile) -> Self {
        let mut by_digest = HashMap::with_capacity(file.entries.len() * 2);
        for (i, e) in file.entries.iter().enumerate() {
            by_digest.insert(e.primary, (i, Slot::Primary));
            if let Some(s) = e.secondary {
                by_digest.insert(s, (i, Slot::Secondary));
            }
        }
        Self {
            entries: file.entries,
            by_digest,
        }
    }

    /// An empty store: every key is refused.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
            by_digest: HashMap::new(),
        }
    }

    /// Reads, parses and indexes a key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileErrors> {
        KeyFile::load(path).map(Self::new)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The entry with this id, for the admin view and for logs.
    pub fn get(&self, id: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| &*e.id == id)
    }

    /// The key whose primary or secondary value is `presented`, unless expired at `now`.
    ///
    /// Timing: the presented key is hashed first, and only its SHA-256 digest is used from then
    /// on; the stored values are digests too. The digests are looked up in a hash map rather
    /// than compared one by one, so a lookup costs the same with ten keys or ten thousand.
    /// This leaks nothing about any key: what a timing difference could reveal is at most how
    /// the *digest* of the attacker's own input relates to a stored digest, and turning that
    /// into a key needs a SHA-256 preimage. Even so, digest equality is constant-time
    /// ([`KeyDigest`]'s `PartialEq`), and the map's hasher (SipHash with a random key) does not
    /// branch on the bytes it hashes, so there is no comparison whose duration depends on how
    /// many leading bytes matched.
    ///
    /// Expiry is checked after the match: an expired key is reported as such (with its id)
    /// because the client already proved it holds the key.
    pub fn lookup(&self, presented: &str, now: SystemTime) -> Result<KeyMatch, KeyError> {
        if presented.is_empty() || presented.len() > MAX_KEY_LEN {
            return Err(KeyError::Unknown);
        }
        let digest = KeyDigest::of(presented.as_bytes());
        let Some(&(index, slot)) = self.by_digest.get(&digest) else {
            return Err(KeyError::Unknown);
        };
        let entry = &self.entries[index];
        if entry.expires.is_some_and(|t| now >= t) {
            return Err(KeyError::Expired {
                id: entry.id.clone(),
            });
        }
        Ok(KeyMatch {
            id: entry.id.clone(),
            owner: entry.owner.clone(),
            scope: entry.scope.clone(),
            slot,
        })
    }
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// The current store, replaced whole on reload: a lookup sees the old keys or the new, never a
/// mix; a reload that fails keeps the old keys.
pub struct SharedKeyStore {
    current: ArcSwap<KeyStore>,
}

impl SharedKeyStore {
    pub fn new(store: KeyStore) -> Self {
        Self {
            current: ArcSwap::from_pointee(store),
        }
    }

    /// The store to use for one request.
    pub fn current(&self) -> Arc<KeyStore> {
        self.current.load_full()
    }

    pub fn replace(&self, store: KeyStore) {
        self.current.store(Arc::new(store));
    }

    /// Reads `path` again; on success swaps the new keys in and returns how many there are. On
    /// failure the old keys stay in use.
    pub fn reload(&self, path: &Path) -> Result<usize, KeyFileErrors> {
        let store = KeyStore::load(path)?;
        let n = store.len();
        self.replace(store);
        Ok(n)
    }
}

impl fmt::Debug for SharedKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedKeyStore")
            .field(&*self.current.load())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// Where a presented key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Header,
    Query,
}

/// A key as a client presented it. Its `Debug` omits the value and there is no `Display`, so it
/// cannot reach a log by accident; [`PresentedKey::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    value: Cow<'a, str>,
    source: KeySource,
}

impl<'a> PresentedKey<'a> {
    /// The key, for [`KeyStore::lookup`]. Never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn into_inner(self) -> Cow<'a, str> {
        self.value
    }

    pub fn source(&self) -> KeySource {
        self.source
    }
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A request whose key cannot be read unambiguously: refuse it (401) rather than guess, since
/// the gateway and the backend could pick different copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the API key header is present more than once")]
    DuplicateHeader,
    #[error("the API key header is not visible ASCII")]
    InvalidHeader,
    #[error("the API key query parameter is present more than once")]
    DuplicateQueryParam,
    #[error("the API key query parameter is not valid UTF-8 once percent-decoded")]
    InvalidQueryParam,
}

/// The key a request presents: the header `header_name` if present and non-empty, otherwise
/// the query parameter `query_param` (percent-decoded, `+` as space, as in form encoding). An
/// empty value counts as absent. A header sent twice, or a parameter given twice, is an error,
/// even if one copy is empty: ambiguity is a smuggling vector.
///
/// `query` is the raw query string, without the `?` (`uri.query()`).
pub fn presented_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    header_name: &HeaderName,
    query_param: &str,
) -> Result<Option<PresentedKey<'a>>, ExtractError> {
    let mut values = headers.get_all(header_name).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Err(ExtractError::DuplicateHeader);
        }
        let value = value.to_str().map_err(|_| ExtractError::InvalidHeader)?;
        if !value.is_empty() {
            return Ok(Some(PresentedKey {
                value: Cow::Borrowed(value),
                source: KeySource::Header,
            }));
        }
    }
    let Some(query) = query else {
        return Ok(None);
    };
    let found =
        crate::identity::encoding::unique_query_param(query, query_param).map_err(|e| match e {
            crate::identity::encoding::QueryParamError::Duplicate => {
                ExtractError::DuplicateQueryParam
            }
            crate::identity::encoding::QueryParamError::Undecodable => {
                ExtractError::InvalidQueryParam
            }
        })?;
    Ok(found.filter(|v| !v.is_empty()).map(|value| PresentedKey {
        value,
        source: KeySource::Query,
    }))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a key file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: error: {kind}")]
pub struct KeyFileError {
    pub location: Location,
    pub kind: KeyFileErrorKind,
}

/// What is wrong. Messages never quote a hash value: an operator who pasted a key where its
/// hash belongs must not find the key in a log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileErrorKind {
    #[error("cannot read the key file: {0}")]
    Read(String),
    #[error("the file is not valid UTF-8")]
    NotUtf8,
    #[error("invalid TOML: {0}")]
    Syntax(String),
    #[error("unknown key `{key}` in {table}; expected one of: {}", expected.join(", "))]
    UnknownKey {
        key: String,
        table: &'static str,
        expected: &'static [&'static str],
    },
    #[error("`{key}`: expected {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("missing required key `{key}` in {table}")]
    Missing {
        key: &'static str,
        table: &'static str,
    },
    #[error("invalid key id `{id}`: use 1 to 64 characters from a-z, 0-9, `_` and `-`")]
    InvalidId { id: String },
    #[error("duplicate key id `{id}` (first used on line {first_line})")]
    DuplicateId { id: String, first_line: usize },
    #[error("`owner`: {reason}")]
    InvalidOwner { reason: &'static str },
    #[error(
        "`{key}`: {reason}; expected `sha256:` and 64 lowercase hex digits (`portcullis key hash` prints it)"
    )]
    InvalidHash {
        key: &'static str,
        reason: &'static str,
    },
    #[error(
        "`{key}` of key `{id}` has the same value as `{other_slot}` of key `{other_id}` (line \
         {other_line}): one secret must not serve two keys or two slots"
    )]
    DuplicateHash {
        key: &'static str,
        id: String,
        other_id: String,
        other_slot: Slot,
        other_line: usize,
    },
    #[error(
        "`scope`: {reason}; expected \"all\", {{ product = \"name\" }} or {{ api = \"route-name\" }}"
    )]
    InvalidScope { reason: String },
    #[error("invalid {what} name `{name}`: use 1 to 32 characters from a-z, 0-9, `_` and `-`")]
    InvalidName { what: &'static str, name: String },
    #[error(
        "`expires`: {reason}; expected an RFC 3339 date and time with offset, such as \
         2027-01-31T00:00:00Z"
    )]
    InvalidExpiry { reason: String },
}

/// Every error of one key file, sorted by position; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFileErrors(Vec<KeyFileError>);

impl KeyFileErrors {
    fn new(mut errors: Vec<KeyFileError>) -> Self {
        debug_assert!(!errors.is_empty());
        errors.sort_by(|a, b| a.location.cmp(&b.location));
        Self(errors)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, KeyFileError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<KeyFileError> {
        self.0
    }
}

impl fmt::Display for KeyFileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KeyFileErrors {}

// ---------------------------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------------------------

/// The text being read (positions come from the config module's [`SourceFile`]) and the
/// errors found so far.
struct Cx<'t> {
    source: SourceFile<'t>,
    errors: Vec<KeyFileError>,
}

impl<'t> Cx<'t> {
    fn new(path: &Path, text: &'t str) -> Self {
        Self {
            source: SourceFile::new(path, text),
            errors: Vec::new(),
        }
    }

    fn location(&self, offset: usize) -> Location {
        self.source.location(offset)
    }

    fn at(&mut self, offset: usize, kind: KeyFileErrorKind) {
        let location = self.location(offset);
        self.errors.push(KeyFileError { location, kind });
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.location(span.start).line
    }

    fn into_errors(self) -> KeyFileErrors {
        KeyFileErrors::new(self.errors)
    }
}

const TOP_KEYS: &[&str] = &["keys"];
const ENTRY_KEYS: &[&str] = &["id", "owner", "primary", "secondary", "scope", "expires"];
const SCOPE_KEYS: &[&str] = &["product", "api"];

fn describe(v: &DeValue<'_>) -> &'static str {
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

fn read_file(doc: &DeTable<'_>, cx: &mut Cx<'_>) -> Vec<KeyEntry> {
    let mut entries = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut digests: HashMap<KeyDigest, (String, Slot, usize)> = HashMap::new();
    for (key, value) in doc.iter() {
        if key.get_ref() != "keys" {
            cx.at(
                key.span().start,
                KeyFileErrorKind::UnknownKey {
                    key: key.get_ref().to_string(),
                    table: "the top level",
                    expected: TOP_KEYS,
                },
            );
            continue;
        }
        let DeValue::Array(items) = value.get_ref() else {
            cx.at(
                value.span().start,
                KeyFileErrorKind::WrongType {
                    key: "keys",
                    expected: "an array of tables ([[keys]])",
                    found: describe(value.get_ref()),
                },
            );
            continue;
        };
        for item in items.iter() {
            let DeValue::Table(table) = item.get_ref() else {
                cx.at(
                    item.span().start,
                    KeyFileErrorKind::WrongType {
                        key: "keys",
                        expected: "an array of tables ([[keys]])",
                        found: describe(item.get_ref()),
                    },
                );
                continue;
            };
            let errors_before = cx.errors.len();
            let Some(entry) = read_entry(table, &item.span(), cx) else {
                continue;
            };
            // Duplicates are checked only for entries that are otherwise valid.
            match ids.entry(entry.id.to_string()) {
                Entry::Occupied(first) => {
                    cx.at(
                        item.span().start,
                        KeyFileErrorKind::DuplicateId {
                            id: entry.id.to_string(),
                            first_line: *first.get(),
                        },
                    );
                    continue;
                }
                Entry::Vacant(v) => {
                    v.insert(entry.line);
                }
            }
            let mut slots = vec![("primary", Slot::Primary, entry.primary)];
            if let Some(s) = entry.secondary {
                slots.push(("secondary", Slot::Secondary, s));
            }
            let hash_spans = entry_hash_spans(table);
            for (key, slot, digest) in slots {
                match digests.entry(digest) {
                    Entry::Occupied(other) => {
                        let (other_id, other_slot, other_line) = other.get().clone();
                        let at = hash_spans(key).unwrap_or(item.span().start);
                        cx.at(
                            at,
                            KeyFileErrorKind::DuplicateHash {
                                key,
                                id: entry.id.to_string(),
                                other_id,
                                other_slot,
                                other_line,
                            },
                        );
                    }
                    Entry::Vacant(v) => {
                        v.insert((entry.id.to_string(), slot, entry.line));
                    }
                }
            }
            if cx.errors.len() == errors_before {
                entries.push(entry);
            }
        }
    }
    entries
}

/// Where `primary` / `secondary` are written in an entry, for duplicate-hash messages.
fn entry_hash_spans<'a>(table: &'a DeTable<'_>) -> impl Fn(&str) -> Option<usize> + 'a {
    move |key| table.get(key).map(|v| v.span().start)
}

fn read_entry(table: &DeTable<'_>, span: &Range<usize>, cx: &mut Cx<'_>) -> Option<KeyEntry> {
    let errors_before = cx.errors.len();
    for (key, _) in table.iter() {
        if !ENTRY_KEYS.contains(&key.get_ref().as_ref()) {
            cx.at(
                key.span().start,
                KeyFileErrorKind::UnknownKey {
                    key: key.get_ref().to_string(),
                    table: "[[keys]]",
                    expected: ENTRY_KEYS,
                },
            );
        }
    }
    let id = required_string(table, "id", span, cx).and_then(|(id, at)| {
        if valid_name(id, MAX_ID_LEN) {
            Some(id)
        } else {
            cx.at(at, KeyFileErrorKind::InvalidId { id: id.to_owned() });
            None
        }
    });
    let owner = required_string(table, "owner", span, cx).and_then(|(owner, at)| {
        let reason = if owner.trim().is_empty() {
            Some("it is empty")
        } else if owner.chars().count() > MAX_OWNER_LEN {
            Some("it is longer than 256 characters")
        } else if owner.chars().any(char::is_control) {
            Some("it contains control characters (it is written to logs)")
        } else {
            None
        };
        match reason {
            Some(reason) => {
                cx.at(at, KeyFileErrorKind::InvalidOwner { reason });
                None
            }
            None => Some(owner),
        }
    });
    let primary = required_string(table, "primary", span, cx)
        .and_then(|(h, at)| digest(h, at, "primary", cx));
    let secondary = match table.get("secondary") {
        None => Some(None),
        Some(v) => string(v, "secondary", cx)
            .and_then(|(h, at)| digest(h, at, "secondary", cx))
            .map(Some),
    };
    let scope = match table.get("scope") {
        None => {
            cx.at(
                span.start,
                KeyFileErrorKind::Missing {
                    key: "scope",
                    table: "[[keys]]",
                },
            );
            None
        }
        Some(v) => scope(v, cx),
    };
    let expires = match table.get("expires") {
        None => Some(None),
        Some(v) => expiry(v, cx).map(Some),
    };
    let (Some(id), Some(owner), Some(primary), Some(secondary), Some(scope), Some(expires)) =
        (id, owner, primary, secondary, scope, expires)
    else {
        return None;
    };
    if cx.errors.len() != errors_before {
        return None;
    }
    Some(KeyEntry {
        id: id.into(),
        owner: owner.into(),
        primary,
        secondary,
        scope,
        expires,
        line: cx.line(span),
    })
}

fn string<'v>(
    v: &'v Spanned<DeValue<'_>>,
    key: &'static str,
    cx: &mut Cx<'_>,
) -> Option<(&'v str, usize)> {
    match v.get_ref() {
        DeValue::String(s) => Some((s, v.span().start)),
        other => {
            cx.at(
                v.span().start,
                KeyFileErrorKind::WrongType {
                    key,
                    expected: "a string",
                    found: describe(other),
                },
            );
            None
        }
    }
}

fn required_string<'v>(
    table: &'v DeTable<'_>,
    key: &'static str,
    span: &Range<usize>,
    cx: &mut Cx<'_>,
) -> Option<(&'v str, usize)> {
    match table.get(key) {
        Some(v) => string(v, key, cx),
        None => {
            cx.at(
                span.start,
                KeyFileErrorKind::Missing {
                    key,
                    table: "[[keys]]",
                },
            );
            None
        }
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `sha256:<64 lowercase hex>` to a digest. The value is never quoted in an error.
fn digest(s: &str, at: usize, key: &'static str, cx: &mut Cx<'_>) -> Option<KeyDigest> {
    let reason = match s.strip_prefix(HASH_PREFIX) {
        None => Some("it does not start with `sha256:` (store the key's hash, never the key)"),
        Some(hex) if hex.len() != 64 => Some("the hash is not 64 hex digits long"),
        Some(hex)
            if !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Some("the hash has a character that is not a lowercase hex digit")
        }
        Some(_) => None,
    };
    if let Some(reason) = reason {
        cx.at(at, KeyFileErrorKind::InvalidHash { key, reason });
        return None;
    }
    let hex = &s.as_bytes()[HASH_PREFIX.len()..];
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = (crate::identity::encoding::hex_value(pair[0])? << 4)
            | crate::identity::encoding::hex_value(pair[1])?;
    }
    let d = KeyDigest(out);
    if d == KeyDigest::of(b"") {
        let reason = "this is the hash of the empty string";
        cx.at(at, KeyFileErrorKind::InvalidHash { key, reason });
        return None;
    }
    Some(d)
}

fn scope(v: &Spanned<DeValue<'_>>, cx: &mut Cx<'_>) -> Option<Scope> {
    let at = v.span().start;
    match v.get_ref() {
        DeValue::String(s) if s == "all" => Some(Scope::All),
        DeValue::String(s) => {
            let reason = format!("unknown scope `{s}`");
            cx.at(at, KeyFileErrorKind::InvalidScope { reason });
            None
        }
        DeValue::Table(t) => {
            let mut found: Option<Scope> = None;
            let mut ok = true;
            for (key, value) in t.iter() {
                let k: &str = key.get_ref();
                if !SCOPE_KEYS.contains(&k) {
                    cx.at(
                        key.span().start,
                        KeyFileErrorKind::UnknownKey {
                            key: k.to_owned(),
                            table: "`scope`",
                            expected: SCOPE_KEYS,
                        },
                    );
                    ok = false;
                    continue;
                }
                let what = if k == "product" { "product" } else { "api" };
                let Some((name, name_at)) = string(value, "scope", cx) else {
                    ok = false;
                    continue;
                };
                if !valid_name(name, MAX_NAME_LEN) {
                    let name = name.to_owned();
                    cx.at(name_at, KeyFileErrorKind::InvalidName { what, name });
                    ok = false;
                    continue;
                }
                if found.is_some() {
                    // Reported at the table: keys are iterated in sorted order, not as written.
                    let reason = "give either `product` or `api`, not both".to_owned();
                    cx.at(at, KeyFileErrorKind::InvalidScope { reason });
                    ok = false;
                    continue;
                }
                found = Some(if what == "product" {
                    Scope::Product(name.into())
                } else {
                    Scope::Api(name.into())
                });
            }
            if !ok {
                return None;
            }
            if found.is_none() {
                let reason = "the table is empty".to_owned();
                cx.at(at, KeyFileErrorKind::InvalidScope { reason });
            }
            found
        }
        other => {
            let reason = format!("found {}", describe(other));
            cx.at(at, KeyFileErrorKind::InvalidScope { reason });
            None
        }
    }
}

/// `expires`: a TOML offset date-time, or a string holding an RFC 3339 timestamp.
fn expiry(v: &Spanned<DeValue<'_>>, cx: &mut Cx<'_>) -> Option<SystemTime> {
    let at = v.span().start;
    let parsed: Result<Datetime, String> = match v.get_ref() {
        DeValue::Datetime(d) => Ok(*d),
        DeValue::String(s) => s
            .parse::<Datetime>()
            .map_err(|_| format!("`{s}` is not a date and time")),
        other => Err(format!("found {}", describe(other))),
    };
    match parsed.and_then(|d| to_system_time(&d)) {
        Ok(t) => Some(t),
        Err(reason) => {
            cx.at(at, KeyFileErrorKind::InvalidExpiry { reason });
            None
        }
    }
}

/// An offset date-time to a point in time; local (offset-less) times are refused, since the
/// gateway's time zone must not decide when a key expires.
fn to_system_time(d: &Datetime) -> Result<SystemTime, String> {
    let (Some(date), Some(time)) = (d.date, d.time) else {
        return Err("it needs both a date and a time".to_owned());
    };
    let offset_minutes = match d.offset {
        None => return Err("it has no UTC offset (add `Z` or `+hh:mm`)".to_owned()),
        Some(Offset::Z) => 0i64,
        Some(Offset::Custom { minutes }) => i64::from(minutes),
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_minutes * 60;
    let nanos = time.nanosecond.unwrap_or(0);
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
    };
    t.ok_or_else(|| "it is out of range".to_owned())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn parse(text: &str) -> Result<KeyFile, KeyFileErrors> {
        KeyFile::parse(text, Path::new("keys.toml"))
    }

    fn errors(text: &str) -> String {
        parse(text)
            .expect_err("the file should be refused")
            .to_string()
    }

    fn store(text: &str) -> KeyStore {
        KeyStore::new(parse(text).expect("valid key file"))
    }

    fn valid_file() -> String {
        format!(
            r#"
[[keys]]
id = "acme-prod"
owner = "ACME Corp <ops@acme.example>"
primary = "{}"
secondary = "{}"
scope = "all"

[[keys]]
id = "billing"
owner = "Billing team"
primary = "{}"
scope = {{ product = "gold" }}
expires = 2030-01-01T00:00:00Z

[[keys]]
id = "orders-only"
owner = "Partner"
primary = "{}"
scope = {{ api = "orders" }}
expires = "2030-01-01T01:00:00+01:00"
"#,
            hash_key("acme-one"),
            hash_key("acme-two"),
            hash_key("billing-key"),
            hash_key("orders-key"),
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2030-01-01T00:00:00Z.
    const Y2030: u64 = 1_893_456_000;

    #[test]
    fn parses_a_valid_file() {
        let file = parse(&valid_file()).expect("valid");
        let e = file.entries();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].id(), "acme-prod");
        assert_eq!(e[0].owner(), "ACME Corp <ops@acme.example>");
        assert_eq!(e[0].scope(), &Scope::All);
        assert!(e[0].has_secondary());
        assert_eq!(e[0].expires(), None);
        assert_eq!(e[0].line(), 2);
        assert_eq!(e[1].scope(), &Scope::Product("gold".into()));
        assert_eq!(e[1].expires(), Some(at(Y2030)));
        assert_eq!(e[2].scope(), &Scope::Api("orders".into()));
        // A string with an offset: the same instant.
        assert_eq!(e[2].expires(), Some(at(Y2030)));
        assert_eq!(e[2].line(), 16);
    }

    /// The example in docs/api-keys.md parses; its hashes are of `foo`, `bar`, `baz`, `qux`.
    #[test]
    fn docs_example_parses() {
        let doc = include_str!("../../../docs/api-keys.md");
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block in docs/api-keys.md");
        let s = store(example);
        let slot = |k: &str| s.lookup(k, at(0)).map(|m| (m.id.to_string(), m.slot));
        assert_eq!(slot("foo"), Ok(("acme-prod".into(), Slot::Primary)));
        assert_eq!(slot("bar"), Ok(("acme-prod".into(), Slot::Secondary)));
        assert_eq!(slot("baz"), Ok(("billing-partner".into(), Slot::Primary)));
        assert_eq!(slot("qux"), Ok(("orders-reader".into(), Slot::Primary)));
    }

    #[test]
    fn an_empty_file_is_an_empty_store() {
        let s = store("");
        assert!(s.is_empty());
        assert_eq!(s.lookup("x", at(0)), Err(KeyError::Unknown));
        assert!(KeyStore::empty().is_empty());
    }

    #[test]
    fn syntax_error_is_located() {
        let e = errors("[[keys]]\nid = \"a\nowner = 1\n");
        assert!(e.starts_with("keys.toml:2:"), "{e}");
        assert!(e.contains("error: invalid TOML"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_everywhere() {
        let text = format!(
            "version = 1\n[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{ABC}\"\nscope = {{ product = \"p\", team = \"x\" }}\nexpire = 2030-01-01T00:00:00Z\n"
        );
        assert_eq!(
            errors(&text),
            "keys.toml:1:1: error: unknown key `version` in the top level; expected one of: keys\n\
             keys.toml:6:26: error: unknown key `team` in `scope`; expected one of: product, api\n\
             keys.toml:7:1: error: unknown key `expire` in [[keys]]; expected one of: id, owner, \
             primary, secondary, scope, expires"
        );
    }

    #[test]
    fn missing_and_wrong_types() {
        let text = "[[keys]]\nid = 7\n";
        assert_eq!(
            errors(text),
            "keys.toml:1:1: error: missing required key `owner` in [[keys]]\n\
             keys.toml:1:1: error: missing required key `primary` in [[keys]]\n\
             keys.toml:1:1: error: missing required key `scope` in [[keys]]\n\
             keys.toml:2:6: error: `id`: expected a string, found an integer"
        );
        assert_eq!(
            errors("keys = 3\n"),
            "keys.toml:1:8: error: `keys`: expected an array of tables ([[keys]]), found an integer"
        );
    }

    #[test]
    fn bad_ids_and_owners() {
        let text = format!(
            "[[keys]]\nid = \"Acme Prod\"\nowner = \"\"\nprimary = \"{ABC}\"\nscope = \"all\"\n"
        );
        assert_eq!(
            errors(&text),
            "keys.toml:2:6: error: invalid key id `Acme Prod`: use 1 to 64 characters from a-z, \
             0-9, `_` and `-`\n\
             keys.toml:3:9: error: `owner`: it is empty"
        );
        let long = "a".repeat(65);
        let text = format!(
            "[[keys]]\nid = \"{long}\"\nowner = \"o\"\nprimary = \"{ABC}\"\nscope = \"all\"\n"
        );
        assert!(errors(&text).contains("invalid key id"));
        let ok = "a".repeat(64);
        let text = format!(
            "[[keys]]\nid = \"{ok}\"\nowner = \"o\"\nprimary = \"{ABC}\"\nscope = \"all\"\n"
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = format!(
            "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{}\"\nscope = \"all\"\n\
             [[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{}\"\nscope = \"all\"\n",
            hash_key("k1"),
            hash_key("k2")
        );
        assert_eq!(
            errors(&text),
            "keys.toml:6:1: error: duplicate key id `a` (first used on line 1)"
        );
    }

    #[test]
    fn duplicate_hashes_are_refused() {
        let text = format!(
            "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{h1}\"\nscope = \"all\"\n\
             [[keys]]\nid = \"b\"\nowner = \"o\"\nprimary = \"{h2}\"\nsecondary = \"{h1}\"\nscope = \"all\"\n",
            h1 = hash_key("k1"),
            h2 = hash_key("k2")
        );
        assert_eq!(
            errors(&text),
            "keys.toml:10:13: error: `secondary` of key `b` has the same value as `primary` of \
             key `a` (line 1): one secret must not serve two keys or two slots"
        );
        // Primary and secondary of one key equal.
        let text = format!(
            "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{ABC}\"\nsecondary = \"{ABC}\"\nscope = \"all\"\n"
        );
        assert!(errors(&text).starts_with(
            "keys.toml:5:13: error: `secondary` of key `a` has the same value as `primary` \
                 of key `a`"
        ));
    }

    #[test]
    fn malformed_hashes_are_refused_without_quoting_them() {
        let cases = [
            ("my-secret-key", "it does not start with `sha256:`"),
            ("sha256:abc", "the hash is not 64 hex digits long"),
            (
                &*ABC.to_uppercase().replace("SHA256:", "sha256:"),
                "not a lowercase hex digit",
            ),
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "the hash of the empty string",
            ),
        ];
        for (hash, reason) in cases {
            let text = format!(
                "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{hash}\"\nscope = \"all\"\n"
            );
            let e = errors(&text);
            assert!(e.starts_with("keys.toml:4:11: error: `primary`: "), "{e}");
            assert!(e.contains(reason), "{e}");
            assert!(!e.contains(hash), "the value leaked: {e}");
        }
        let text = "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"sha256:\"\nsecondary = 5\nscope = \"all\"\n";
        assert_eq!(
            errors(text),
            "keys.toml:4:11: error: `primary`: the hash is not 64 hex digits long; expected \
             `sha256:` and 64 lowercase hex digits (`portcullis key hash` prints it)\n\
             keys.toml:5:13: error: `secondary`: expected a string, found an integer"
        );
    }

    #[test]
    fn bad_scopes() {
        let cases = [
            (
                "\"everything\"",
                "keys.toml:5:9: error: `scope`: unknown scope `everything`",
            ),
            ("{}", "keys.toml:5:9: error: `scope`: the table is empty"),
            (
                "{ product = \"a\", api = \"b\" }",
                "keys.toml:5:9: error: `scope`: give either `product` or `api`, not both",
            ),
            (
                "{ api = \"Orders\" }",
                "keys.toml:5:17: error: invalid api name `Orders`",
            ),
            ("3", "keys.toml:5:9: error: `scope`: found an integer"),
        ];
        for (scope, expected) in cases {
            let text = format!(
                "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{ABC}\"\nscope = {scope}\n"
            );
            let e = errors(&text);
            assert!(e.starts_with(expected), "{scope}: {e}");
        }
    }

    #[test]
    fn bad_expiry() {
        let cases = [
            ("2030-01-01", "it needs both a date and a time"),
            ("2030-01-01T00:00:00", "it has no UTC offset"),
            ("\"tomorrow\"", "`tomorrow` is not a date and time"),
            ("\"2030-01-01T00:00:00\"", "it has no UTC offset"),
            ("true", "found a boolean"),
        ];
        for (expires, reason) in cases {
            let text = format!(
                "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{ABC}\"\nscope = \"all\"\nexpires = {expires}\n"
            );
            let e = errors(&text);
            assert!(e.starts_with("keys.toml:6:11: error: `expires`: "), "{e}");
            assert!(e.contains(reason), "{expires}: {e}");
        }
    }

    #[test]
    fn load_reports_unreadable_and_non_utf8_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.toml");
        let e = KeyStore::load(&missing).expect_err("missing");
        assert!(
            e.to_string()
                .contains(":1:1: error: cannot read the key file")
        );
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, b"# ok\n# \xff\n").expect("write");
        let e = KeyStore::load(&bad).expect_err("not utf-8");
        assert!(
            e.to_string()
                .ends_with(":2:3: error: the file is not valid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn lookup_primary_and_secondary() {
        let s = store(&valid_file());
        let m = s.lookup("acme-one", at(0)).expect("primary");
        assert_eq!(
            m,
            KeyMatch {
                id: "acme-prod".into(),
                owner: "ACME Corp <ops@acme.example>".into(),
                scope: Scope::All,
                slot: Slot::Primary,
            }
        );
        let m = s.lookup("acme-two", at(0)).expect("secondary");
        assert_eq!((&*m.id, m.slot), ("acme-prod", Slot::Secondary));
        assert_eq!(m.slot.as_str(), "secondary");
        assert_eq!(s.lookup("acme-three", at(0)), Err(KeyError::Unknown));
        assert_eq!(s.lookup("", at(0)), Err(KeyError::Unknown));
        assert_eq!(
            s.lookup(&"x".repeat(MAX_KEY_LEN + 1), at(0)),
            Err(KeyError::Unknown)
        );
        // Keys are case-sensitive and not trimmed.
        assert_eq!(s.lookup("ACME-ONE", at(0)), Err(KeyError::Unknown));
        assert_eq!(s.lookup("acme-one ", at(0)), Err(KeyError::Unknown));
        assert_eq!(s.get("billing").map(KeyEntry::owner), Some("Billing team"));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn expiry_is_enforced() {
        let s = store(&valid_file());
        assert!(s.lookup("billing-key", at(Y2030 - 1)).is_ok());
        let expired = Err(KeyError::Expired {
            id: "billing".into(),
        });
        assert_eq!(s.lookup("billing-key", at(Y2030)), expired);
        assert_eq!(s.lookup("billing-key", at(Y2030 + 1)), expired);
        assert_eq!(
            KeyError::Expired {
                id: "billing".into()
            }
            .to_string(),
            "API key `billing` has expired"
        );
        // Keys without `expires` never expire.
        assert!(s.lookup("acme-one", at(u64::from(u32::MAX))).is_ok());
    }

    #[test]
    fn scopes() {
        assert!(Scope::All.allows("orders", None));
        assert!(Scope::All.allows("orders", Some("gold")));
        let product = Scope::Product("gold".into());
        assert!(product.allows("orders", Some("gold")));
        assert!(!product.allows("orders", Some("silver")));
        assert!(!product.allows("gold", None));
        let api = Scope::Api("orders".into());
        assert!(api.allows("orders", None));
        assert!(api.allows("orders", Some("gold")));
        assert!(!api.allows("invoices", Some("gold")));
        let s = store(&valid_file());
        let m = s.lookup("orders-key", at(0)).expect("match");
        assert!(m.scope.allows("orders", None));
        assert!(!m.scope.allows("billing", None));
        assert_eq!(m.scope.to_string(), "api `orders`");
    }

    #[test]
    fn rfc3339_instants() {
        let t = |s: &str| to_system_time(&s.parse::<Datetime>().expect("datetime"));
        assert_eq!(t("1970-01-01T00:00:00Z"), Ok(UNIX_EPOCH));
        assert_eq!(t("2000-03-01T00:00:00Z"), Ok(at(951_868_800)));
        assert_eq!(t("2024-02-29T12:00:00-05:30"), Ok(at(1_709_227_800)));
        assert_eq!(
            t("2030-01-01T00:00:00.5Z"),
            Ok(at(Y2030) + Duration::from_millis(500))
        );
        assert_eq!(
            t("1969-12-31T23:59:59Z"),
            Ok(UNIX_EPOCH - Duration::from_secs(1))
        );
    }

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                (*name).clone(),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    fn extract(
        h: &HeaderMap,
        q: Option<&str>,
    ) -> Result<Option<(String, KeySource)>, ExtractError> {
        presented_key(h, q, &DEFAULT_HEADER_NAME, DEFAULT_QUERY_PARAM)
            .map(|k| k.map(|k| (k.expose().to_owned(), k.source())))
    }

    #[test]
    fn header_beats_query() {
        let h = headers(&[(&DEFAULT_HEADER_NAME, "from-header")]);
        assert_eq!(
            extract(&h, Some("subscription-key=from-query")),
            Ok(Some(("from-header".into(), KeySource::Header)))
        );
        // Header names are case-insensitive.
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(b"OCP-APIM-Subscription-Key").expect("name"),
            HeaderValue::from_static("k"),
        );
        assert_eq!(extract(&h, None), Ok(Some(("k".into(), KeySource::Header))));
    }

    #[test]
    fn query_only_when_header_absent() {
        let none = HeaderMap::new();
        assert_eq!(
            extract(&none, Some("a=1&subscription-key=q-key&b=2")),
            Ok(Some(("q-key".into(), KeySource::Query)))
        );
        assert_eq!(extract(&none, Some("a=1")), Ok(None));
        assert_eq!(extract(&none, None), Ok(None));
        assert_eq!(extract(&none, Some("")), Ok(None));
        // Empty values count as absent.
        assert_eq!(extract(&none, Some("subscription-key=")), Ok(None));
        assert_eq!(extract(&none, Some("subscription-key")), Ok(None));
        let empty = headers(&[(&DEFAULT_HEADER_NAME, "")]);
        assert_eq!(
            extract(&empty, Some("subscription-key=q")),
            Ok(Some(("q".into(), KeySource::Query)))
        );
        // Names are exact: no prefix or case folding.
        assert_eq!(extract(&none, Some("Subscription-Key=q")), Ok(None));
        assert_eq!(extract(&none, Some("xsubscription-key=q")), Ok(None));
    }

    #[test]
    fn duplicates_are_refused() {
        let h = headers(&[(&DEFAULT_HEADER_NAME, "a"), (&DEFAULT_HEADER_NAME, "b")]);
        assert_eq!(extract(&h, None), Err(ExtractError::DuplicateHeader));
        let h = headers(&[(&DEFAULT_HEADER_NAME, "a"), (&DEFAULT_HEADER_NAME, "")]);
        assert_eq!(extract(&h, None), Err(ExtractError::DuplicateHeader));
        let none = HeaderMap::new();
        assert_eq!(
            extract(&none, Some("subscription-key=a&subscription-key=b")),
            Err(ExtractError::DuplicateQueryParam)
        );
        // An encoded name is the same parameter.
        assert_eq!(
            extract(&none, Some("subscription-key=a&subscription%2Dkey=a")),
            Err(ExtractError::DuplicateQueryParam)
        );
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let none = HeaderMap::new();
        let q = |s: &str| extract(&none, Some(s)).map(|k| k.map(|(v, _)| v));
        assert_eq!(q("subscription-key=a%2Bb%2fc"), Ok(Some("a+b/c".into())));
        assert_eq!(q("subscription-key=a+b"), Ok(Some("a b".into())));
        assert_eq!(q("subscription-key=%C3%A9"), Ok(Some("é".into())));
        assert_eq!(q("subscription-key=100%"), Ok(Some("100%".into())));
        assert_eq!(q("subscription-key=%zz"), Ok(Some("%zz".into())));
        assert_eq!(q("subscription-key=%"), Ok(Some("%".into())));
        assert_eq!(
            q("subscription-key=%ff"),
            Err(ExtractError::InvalidQueryParam)
        );
        assert_eq!(q("subscription-key=a=b"), Ok(Some("a=b".into())));
        assert_eq!(q("subscription%2Dkey=k"), Ok(Some("k".into())));
    }

    #[test]
    fn non_ascii_header_is_invalid() {
        let mut h = HeaderMap::new();
        h.insert(
            DEFAULT_HEADER_NAME,
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("value"),
        );
        assert_eq!(extract(&h, None), Err(ExtractError::InvalidHeader));
    }

    #[test]
    fn custom_names() {
        let name = HeaderName::from_static("x-api-key");
        let h = headers(&[(&name, "h")]);
        let k = presented_key(&h, Some("key=q"), &name, "key").expect("ok");
        assert_eq!(k.map(|k| k.expose().to_owned()), Some("h".into()));
        let none = HeaderMap::new();
        let k = presented_key(&none, Some("key=q"), &name, "key").expect("ok");
        assert_eq!(k.map(|k| k.expose().to_owned()), Some("q".into()));
    }

    #[test]
    fn nothing_formats_a_key() {
        let h = headers(&[(&DEFAULT_HEADER_NAME, "s3cr3t-value")]);
        let k = presented_key(&h, None, &DEFAULT_HEADER_NAME, DEFAULT_QUERY_PARAM)
            .expect("ok")
            .expect("some");
        assert!(!format!("{k:?}").contains("s3cr3t"));
        let s = store(&valid_file());
        let debug = format!("{s:?} {:?}", s.entries());
        assert!(!debug.contains(&hash_key("acme-one")[7..]), "{debug}");
        let m = s.lookup("acme-one", at(0)).expect("match");
        assert!(!format!("{m:?}").contains("acme-one\""));
    }

    #[test]
    fn hash_key_known_answer() {
        assert_eq!(hash_key("abc"), ABC);
        assert_eq!(
            hash_key(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn generated_keys() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert_eq!(k.len(), 43);
            assert!(
                k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "{k}"
            );
        }
        // A generated key round-trips through a key file.
        let text = format!(
            "[[keys]]\nid = \"g\"\nowner = \"o\"\nprimary = \"{}\"\nscope = \"all\"\n",
            hash_key(&a)
        );
        let s = store(&text);
        assert_eq!(s.lookup(&a, at(0)).map(|m| m.slot), Ok(Slot::Primary));
        assert_eq!(s.lookup(&b, at(0)), Err(KeyError::Unknown));
    }

    #[test]
    fn shared_store_reloads_and_keeps_old_keys_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        let file = |key: &str| {
            format!(
                "[[keys]]\nid = \"a\"\nowner = \"o\"\nprimary = \"{}\"\nscope = \"all\"\n",
                hash_key(key)
            )
        };
        std::fs::write(&path, file("old")).expect("write");
        let shared = SharedKeyStore::new(KeyStore::load(&path).expect("load"));
        assert!(shared.current().lookup("old", at(0)).is_ok());
        std::fs::write(&path, file("new")).expect("write");
        assert_eq!(shared.reload(&path), Ok(1));
        assert!(shared.current().lookup("new", at(0)).is_ok());
        assert!(shared.current().lookup("old", at(0)).is_err());
        std::fs::write(&path, "garbage = ").expect("write");
        assert!(shared.reload(&path).is_err());
        assert!(shared.current().lookup("new", at(0)).is_ok());
    }

    #[test]
    fn constant_time_equality() {
        let a = KeyDigest::of(b"a");
        let mut b = a;
        assert_eq!(a, b);
        b.0[31] ^= 1;
        assert_ne!(a, b);
        b = a;
        b.0[0] ^= 0x80;
        assert_ne!(a, b);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A lookup matches exactly when the presented key's hash is in the store, and then
        /// names the entry and slot holding that hash.
        #[test]
        fn lookup_matches_only_stored_hashes(
            keys in proptest::collection::btree_set("[ -~]{1,40}", 1..8),
            probes in proptest::collection::vec("[ -~]{0,40}", 0..16),
        ) {
            let keys: Vec<String> = keys.into_iter().collect();
            let mut text = String::new();
            for (i, pair) in keys.chunks(2).enumerate() {
                text.push_str(&format!(
                    "[[keys]]\nid = \"k{i}\"\nowner = \"o\"\nprimary = \"{}\"\nscope = \"all\"\n",
                    hash_key(&pair[0])
                ));
                if let Some(second) = pair.get(1) {
                    text.push_str(&format!("secondary = \"{}\"\n", hash_key(second)));
                }
            }
            let s = store(&text);
            for (j, key) in keys.iter().enumerate() {
                let m = s.lookup(key, at(0)).expect("stored key matches");
                prop_assert_eq!(&*m.id, format!("k{}", j / 2));
                prop_assert_eq!(m.slot, if j % 2 == 0 { Slot::Primary } else { Slot::Secondary });
            }
            for probe in probes.iter().chain(keys.iter().map(|k| format!("{k}x")).collect::<Vec<_>>().iter()) {
                let stored = keys.iter().any(|k| hash_key(k) == hash_key(probe));
                prop_assert_eq!(s.lookup(probe, at(0)).is_ok(), stored && !probe.is_empty());
            }
        }
    }
}
