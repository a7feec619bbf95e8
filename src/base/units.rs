//! Human-friendly units for the daemon config and app manifests — byte sizes (`"64MiB"`) and
//! durations (`"1m30s"`) — plus the small TOML field readers both parsers share, so every
//! config and manifest error reads the same way: `<key path>: <what was wrong; what was expected>`.
//!
//! Owns: parsing and formatting of sizes and durations, their serde adapters ([`ByteSize`],
//! [`Millis`]), and key-path bookkeeping for TOML tables ([`Fields`], [`Field`], [`FieldError`]).
//! Must not: do I/O, or know what any particular key means — that belongs to the parser using it.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Longest slice of user input quoted back in an error; untrusted manifests could otherwise make
/// a single error message arbitrarily large.
const MAX_QUOTED_CHARS: usize = 64;

/// Why a size or duration string was rejected. The display text is meant to follow a key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("expected a size like \"64MiB\", got {input:?}")]
    InvalidSize { input: String },
    #[error(
        "unknown size unit {unit:?} in {input:?}; expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
    )]
    UnknownSizeUnit { input: String, unit: String },
    #[error("negative size {input:?}; expected zero or more bytes")]
    NegativeSize { input: String },
    #[error("fractional size {input:?}; expected a whole number, e.g. \"1536MiB\" for 1.5GiB")]
    FractionalSize { input: String },
    #[error("size {input:?} is too large; the maximum is 18446744073709551615 bytes (16EiB)")]
    SizeOverflow { input: String },
    #[error("expected a duration like \"250ms\", \"5s\" or \"1m30s\", got {input:?}")]
    InvalidDuration { input: String },
    #[error("duration {input:?} has no unit; expected e.g. \"{input}ms\" or \"{input}s\"")]
    MissingDurationUnit { input: String },
    #[error("unknown duration unit {unit:?} in {input:?}; expected ms, s, m, h or d")]
    UnknownDurationUnit { input: String, unit: String },
    #[error("negative duration {input:?}; expected zero or more")]
    NegativeDuration { input: String },
    #[error("fractional duration {input:?}; expected whole numbers, e.g. \"1500ms\" for 1.5s")]
    FractionalDuration { input: String },
    #[error(
        "duration {input:?} repeats or misorders its units; expected largest to smallest, each at most once, like \"1h30m\""
    )]
    MisorderedDuration { input: String },
    #[error("duration {input:?} is too large")]
    DurationOverflow { input: String },
}

// === sizes ===

/// Longest key-value store label: keeps labels usable as metric label values and in backend key
/// prefixes.
pub const MAX_STORE_LABEL: usize = 63;

/// A key-value store label (`key_value_stores` in a manifest, `[key_value.stores.NAME]` in node
/// config): Spin's rule, a component-model label in snake_case — non-empty `_`-separated words,
/// each starting with an ASCII letter and either all lowercase or all uppercase (digits allowed)
/// — plus a cap of [`MAX_STORE_LABEL`] bytes.
pub fn is_store_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STORE_LABEL
        && s.split('_').all(|word| {
            word.bytes().next().is_some_and(|c| c.is_ascii_alphabetic())
                && (word
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    || word
                        .bytes()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
        })
}

/// Parses a byte size: a bare number of bytes (`"512"`), or a number with a decimal
/// (`KB` = 1000, `MB`, `GB`, `TB`) or binary (`KiB` = 1024, `MiB`, `GiB`, `TiB`) unit, optionally
/// separated by spaces. Units are case-insensitive; a bare `K`/`M`/`G` is rejected because it is
/// ambiguous between the decimal and binary meaning.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let input = || quote(s);
    let t = s.trim();
    if t.starts_with('-') {
        return Err(UnitError::NegativeSize { input: input() });
    }
    let (digits, rest) = split_digits(t);
    if digits.is_empty() {
        return Err(UnitError::InvalidSize { input: input() });
    }
    if rest.starts_with('.') {
        return Err(UnitError::FractionalSize { input: input() });
    }
    let unit = rest.trim_start();
    let multiplier = match size_multiplier(unit) {
        Some(m) => m,
        None if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
            return Err(UnitError::UnknownSizeUnit {
                input: input(),
                unit: quote(unit),
            });
        }
        None => return Err(UnitError::InvalidSize { input: input() }),
    };
    // `digits` is all ASCII digits, so the only way to fail is overflow.
    let value: u64 = digits
        .parse()
        .map_err(|_| UnitError::SizeOverflow { input: input() })?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| UnitError::SizeOverflow { input: input() })
}

fn size_multiplier(unit: &str) -> Option<u64> {
    const KI: u64 = 1 << 10;
    let m = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => KI,
        "mib" => KI * KI,
        "gib" => KI * KI * KI,
        "tib" => KI * KI * KI * KI,
        _ => return None,
    };
    Some(m)
}

/// Formats a byte count with the largest binary unit that divides it exactly, so that
/// `format_bytes(parse_bytes(s)?)` reads like what an operator would have written.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        let size = 1u64 << shift;
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

// === durations ===

/// Parses a duration made of one or more `<number><unit>` parts, units `d`, `h`, `m`, `s`, `ms`,
/// largest first and each at most once: `"250ms"`, `"5s"`, `"1m30s"`, `"2h"`, `"90d"`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let input = || quote(s);
    let t = s.trim();
    if t.starts_with('-') {
        return Err(UnitError::NegativeDuration { input: input() });
    }
    if t.is_empty() {
        return Err(UnitError::InvalidDuration { input: input() });
    }
    let mut rest = t;
    let mut total = Duration::ZERO;
    let mut last_rank: Option<u8> = None;
    while !rest.is_empty() {
        let (digits, after) = split_digits(rest);
        if digits.is_empty() {
            return Err(UnitError::InvalidDuration { input: input() });
        }
        if after.starts_with('.') {
            return Err(UnitError::FractionalDuration { input: input() });
        }
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            // A lone number is the common mistake ("500"); say which unit is missing.
            return Err(if after.is_empty() && last_rank.is_none() {
                UnitError::MissingDurationUnit { input: quote(t) }
            } else {
                UnitError::InvalidDuration { input: input() }
            });
        }
        let (rank, unit_secs_or_ms) = match unit {
            "d" => (4, Unit::Secs(86_400)),
            "h" => (3, Unit::Secs(3600)),
            "m" => (2, Unit::Secs(60)),
            "s" => (1, Unit::Secs(1)),
            "ms" => (0, Unit::Millis),
            _ => {
                return Err(UnitError::UnknownDurationUnit {
                    input: input(),
                    unit: quote(unit),
                });
            }
        };
        if last_rank.is_some_and(|last| rank >= last) {
            return Err(UnitError::MisorderedDuration { input: input() });
        }
        last_rank = Some(rank);
        let overflow = || UnitError::DurationOverflow { input: input() };
        let n: u64 = digits.parse().map_err(|_| overflow())?;
        let part = match unit_secs_or_ms {
            Unit::Secs(per) => Duration::from_secs(n.checked_mul(per).ok_or_else(overflow)?),
            Unit::Millis => Duration::from_millis(n),
        };
        total = total.checked_add(part).ok_or_else(overflow)?;
        rest = after.trim_start();
    }
    Ok(total)
}

enum Unit {
    Secs(u64),
    Millis,
}

/// Splits leading ASCII digits off `s`.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Copies at most [`MAX_QUOTED_CHARS`] characters of user input for an error message.
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

// === serde adapters ===

/// A byte size that deserializes from an integer number of bytes or a string like `"64MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected {SIZE_EXPECTED}, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A duration that deserializes from an integer number of milliseconds or a string like `"5s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub Duration);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MillisVisitor;
        impl Visitor<'_> for MillisVisitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                Ok(Millis(Duration::from_millis(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                u64::try_from(v)
                    .map(|ms| Millis(Duration::from_millis(ms)))
                    .map_err(|_| E::custom(format!("expected {DURATION_EXPECTED}, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                parse_duration(v).map(Millis).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(MillisVisitor)
    }
}

const SIZE_EXPECTED: &str = "a size like \"64MiB\" or an integer number of bytes";
const DURATION_EXPECTED: &str =
    "a duration like \"5s\" or \"1m30s\" or an integer number of milliseconds";

// === TOML field reading ===

/// A problem with one key of a TOML document. The config and manifest parsers prefix the origin
/// (file path) to build their public error types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Dotted key path, e.g. `component.hello.routes[1]`.
    pub key: String,
    /// What was wrong and what was expected.
    pub problem: String,
}

/// Appends `key` to a dotted key path, quoting it the way TOML would if it is not a bare key.
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{:?}", quote(key))
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// A TOML syntax error located in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why a TOML document (a node or control-plane config, an app manifest) was rejected: one shape
/// for all of them, `<origin>:<line>:<column>: invalid TOML: <message>` or
/// `<origin>: <key path>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TomlError {
    #[error("{origin}:{line}:{column}: invalid TOML: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: {key}: {problem}")]
    Invalid {
        origin: String,
        key: String,
        problem: String,
    },
}

impl TomlError {
    /// The key path the error is about (`component.hello.routes[0]`), unless it is a syntax error.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Syntax { .. } => None,
            Self::Invalid { key, .. } => Some(key),
        }
    }

    /// A validation error of the document `origin`.
    pub(crate) fn invalid(origin: &str, e: FieldError) -> Self {
        Self::Invalid {
            origin: origin.to_owned(),
            key: e.key,
            problem: e.problem,
        }
    }
}

/// Parses `text` (from `origin`, for errors) as a TOML table and hands it to `validate`: every
/// error, syntax or validation, comes back as a [`TomlError`].
pub(crate) fn parse_document<T>(
    text: &str,
    origin: &str,
    validate: impl FnOnce(toml::Table) -> Result<T, FieldError>,
) -> Result<T, TomlError> {
    let table = parse_toml(text).map_err(|e| TomlError::Syntax {
        origin: origin.to_owned(),
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    validate(table).map_err(|e| TomlError::invalid(origin, e))
}

/// Parses `text` as a TOML table, turning errors into one-line messages with a line and column.
pub(crate) fn parse_toml(text: &str) -> Result<toml::Table, SyntaxError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let span = e.span();
        let (line, column) = span.clone().map_or((1, 1), |s| line_col(text, s.start));
        let mut message = e.message().trim_end().replace('\n', "; ");
        // toml says only "duplicate key"; the key itself is what the reader needs.
        if message == "duplicate key"
            && let Some(key) = span.and_then(|s| text.get(s)).filter(|k| !k.contains('\n'))
        {
            message = format!("duplicate key `{}`", quote(key));
        }
        SyntaxError {
            line,
            column,
            message,
        }
    })
}

/// Converts a byte offset into a 1-based (line, column) pair, counting columns in characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Describes a value for a "got ..." clause.
pub(crate) fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{:?}", quote(s)),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => format!("the date-time {d}"),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

/// A TOML table being read key by key; whatever is left at [`Fields::finish`] is unknown.
#[derive(Debug)]
pub(crate) struct Fields {
    path: String,
    table: toml::Table,
}

impl Fields {
    pub fn new(path: impl Into<String>, table: toml::Table) -> Self {
        Self {
            path: path.into(),
            table,
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// Gives up key tracking, for tables passed on whole.
    pub fn into_table(self) -> toml::Table {
        self.table
    }

    /// Removes and returns `key`, if present.
    pub fn take(&mut self, key: &str) -> Option<Field> {
        let value = self.table.remove(key)?;
        Some(Field {
            key: key_path(&self.path, key),
            value,
        })
    }

    /// Removes and returns `key`, or reports it missing with what it should contain.
    pub fn required(&mut self, key: &str, expected: &str) -> Result<Field, FieldError> {
        self.take(key).ok_or_else(|| FieldError {
            key: key_path(&self.path, key),
            problem: format!("missing; expected {expected}"),
        })
    }

    /// Removes every remaining entry, in key order (for tables keyed by user-chosen ids).
    pub fn drain(&mut self) -> Vec<(String, Field)> {
        let table = std::mem::take(&mut self.table);
        let mut entries: Vec<(String, Field)> = table
            .into_iter()
            .map(|(k, value)| {
                let key = key_path(&self.path, &k);
                (k, Field { key, value })
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Fails on the first key not consumed, naming the table and the keys it accepts.
    pub fn finish(self, known: &[&str]) -> Result<(), FieldError> {
        self.finish_section(known, &[])
    }

    /// Like [`Fields::finish`] for a `[section]` table. A leftover key that is one of the
    /// document's `top_level` keys was almost certainly meant for the top level but written
    /// below a `[section]` header, where TOML files it under that section; the error says so.
    pub fn finish_section(self, known: &[&str], top_level: &[&str]) -> Result<(), FieldError> {
        let Some(unknown) = self.table.keys().min() else {
            return Ok(());
        };
        let place = if self.path.is_empty() {
            "unknown top-level key".to_owned()
        } else if self.path.ends_with(']') {
            format!("unknown key in {}", self.path)
        } else {
            format!("unknown key in [{}]", self.path)
        };
        let mut problem = format!("{place}; expected one of {}", known.join(", "));
        if let Some(close) = known.iter().find(|k| edit_distance(k, unknown) <= 2) {
            problem.push_str(&format!(" (did you mean {close:?}?)"));
        } else if top_level.contains(&unknown.as_str()) {
            problem.push_str(&format!(
                " ({unknown:?} is a top-level key: move it above the first [table] header)"
            ));
        }
        Err(FieldError {
            key: key_path(&self.path, unknown),
            problem,
        })
    }
}

/// One value taken out of a [`Fields`] table, with its full key path.
#[derive(Debug)]
pub(crate) struct Field {
    pub key: String,
    pub value: toml::Value,
}

impl Field {
    pub fn error(&self, problem: impl fmt::Display) -> FieldError {
        FieldError {
            key: self.key.clone(),
            problem: problem.to_string(),
        }
    }

    fn mismatch(&self, expected: &str) -> FieldError {
        self.error(format_args!(
            "expected {expected}, got {}",
            describe(&self.value)
        ))
    }

    pub fn string(self) -> Result<String, FieldError> {
        match self.value {
            toml::Value::String(s) => Ok(s),
            _ => Err(self.mismatch("a string")),
        }
    }

    pub fn boolean(self) -> Result<bool, FieldError> {
        match self.value {
            toml::Value::Boolean(b) => Ok(b),
            _ => Err(self.mismatch("true or false")),
        }
    }

    /// An integer in `min..=max`, with the accepted range in the error.
    pub fn integer_in<T: TryFrom<i64> + fmt::Display>(self, min: T, max: T) -> Result<T, FieldError>
    where
        i64: From<T>,
    {
        let (lo, hi) = (i64::from(min), i64::from(max));
        let expected = format!("an integer from {lo} to {hi}");
        match self.value {
            toml::Value::Integer(i) if (lo..=hi).contains(&i) => {
                T::try_from(i).map_err(|_| self.mismatch(&expected))
            }
            _ => Err(self.mismatch(&expected)),
        }
    }

    /// A duration in `lo..=hi`, with the range and an example (`"10s"`) in the error.
    pub fn duration_in(
        self,
        (lo, hi): (Duration, Duration),
        example: &str,
    ) -> Result<Duration, FieldError> {
        let key = self.key.clone();
        let d = self.duration()?;
        if d < lo || d > hi {
            return Err(FieldError {
                key,
                problem: format!(
                    "{d:?} is out of range; expected {lo:?} to {hi:?}, like {example}"
                ),
            });
        }
        Ok(d)
    }

    /// An array, each element keyed `path[i]`.
    pub fn array(self) -> Result<Vec<Field>, FieldError> {
        match self.value {
            toml::Value::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, value)| Field {
                    key: format!("{}[{i}]", self.key),
                    value,
                })
                .collect()),
            _ => Err(self.mismatch("an array")),
        }
    }

    /// An array of strings, each element keyed `path[i]`.
    pub fn strings(self) -> Result<Vec<(String, String)>, FieldError> {
        self.array()?
            .into_iter()
            .map(|f| {
                let key = f.key.clone();
                f.string().map(|s| (key, s))
            })
            .collect()
    }

    /// A non-empty array of strings, each turned into a `T` by `parse`, no two alike once parsed
    /// (`/api` and `/api/` are one route). Errors name the element's key: the one `parse`
    /// refused, or the repeat, with `repeat(value, key of its first listing)` as the problem.
    /// An empty array is refused with `empty` as the problem. Each value comes with its key, for
    /// checks that span several arrays.
    pub fn distinct_strings<T: PartialEq>(
        self,
        parse: impl Fn(&str) -> Result<T, String>,
        repeat: impl Fn(&T, &str) -> String,
        empty: &str,
    ) -> Result<Vec<(String, T)>, FieldError> {
        let key = self.key.clone();
        let mut out: Vec<(String, T)> = Vec::new();
        for (k, raw) in self.strings()? {
            let value = parse(&raw).map_err(|problem| FieldError {
                key: k.clone(),
                problem,
            })?;
            if let Some((first, _)) = out.iter().find(|(_, v)| *v == value) {
                return Err(FieldError {
                    problem: repeat(&value, first),
                    key: k,
                });
            }
            out.push((k, value));
        }
        if out.is_empty() {
            return Err(FieldError {
                key,
                problem: empty.to_owned(),
            });
        }
        Ok(out)
    }

    pub fn table(self) -> Result<Fields, FieldError> {
        match self.value {
            toml::Value::Table(t) => Ok(Fields::new(self.key, t)),
            _ => Err(self.mismatch("a table")),
        }
    }

    /// A size: an integer number of bytes or a string like `"64MiB"`.
    pub fn bytes(self) -> Result<u64, FieldError> {
        match &self.value {
            toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| {
                self.error(UnitError::NegativeSize {
                    input: i.to_string(),
                })
            }),
            toml::Value::String(s) => parse_bytes(s).map_err(|e| self.error(e)),
            _ => Err(self.mismatch(SIZE_EXPECTED)),
        }
    }

    /// A duration: an integer number of milliseconds or a string like `"5s"`.
    pub fn duration(self) -> Result<Duration, FieldError> {
        match &self.value {
            toml::Value::Integer(i) => u64::try_from(*i).map(Duration::from_millis).map_err(|_| {
                self.error(UnitError::NegativeDuration {
                    input: i.to_string(),
                })
            }),
            toml::Value::String(s) => parse_duration(s).map_err(|e| self.error(e)),
            _ => Err(self.mismatch(DURATION_EXPECTED)),
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn bytes_accept_plain_decimal_and_binary_units() {
        let cases = [
            ("512", 512),
            ("0", 0),
            ("12B", 12),
            ("64KiB", 64 << 10),
            ("64 MiB", 64 * MIB),
            ("  64mib ", 64 * MIB),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("10MB", 10_000_000),
            ("3kb", 3_000),
            ("1GB", 1_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("18446744073709551615", u64::MAX),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bytes(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn bytes_reject_bad_input_with_a_reason() {
        let bad = |s: &str| parse_bytes(s).expect_err(s);
        assert!(matches!(bad(""), UnitError::InvalidSize { .. }));
        assert!(matches!(bad("lots"), UnitError::InvalidSize { .. }));
        assert!(matches!(bad("MiB"), UnitError::InvalidSize { .. }));
        assert!(matches!(bad("+5"), UnitError::InvalidSize { .. }));
        assert!(matches!(bad("5 Mi B"), UnitError::InvalidSize { .. }));
        assert!(matches!(bad("-1"), UnitError::NegativeSize { .. }));
        assert!(matches!(bad("-64MiB"), UnitError::NegativeSize { .. }));
        assert!(matches!(bad("1.5GiB"), UnitError::FractionalSize { .. }));
        assert!(matches!(bad("64M"), UnitError::UnknownSizeUnit { .. }));
        assert!(matches!(bad("64PiB"), UnitError::UnknownSizeUnit { .. }));
        assert!(matches!(
            bad("18446744073709551616"),
            UnitError::SizeOverflow { .. }
        ));
        assert!(matches!(bad("16777216TiB"), UnitError::SizeOverflow { .. }));
    }

    #[test]
    fn size_errors_quote_the_input_and_say_what_was_expected() {
        assert_eq!(
            parse_bytes("lots").expect_err("garbage").to_string(),
            "expected a size like \"64MiB\", got \"lots\""
        );
        let unit = parse_bytes("64M").expect_err("ambiguous unit").to_string();
        assert!(unit.contains("\"M\"") && unit.contains("MiB"), "{unit}");
    }

    #[test]
    fn quoted_input_is_truncated() {
        let long = "x".repeat(10_000);
        let msg = parse_bytes(&long).expect_err("garbage").to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains('…'));
        // Truncation must respect char boundaries.
        let wide = "é".repeat(100);
        assert_eq!(quote(&wide).chars().count(), MAX_QUOTED_CHARS + 1);
    }

    #[test]
    fn format_bytes_picks_the_largest_exact_unit() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(1000), "1000B");
        assert_eq!(format_bytes(64 * MIB), "64MiB");
        assert_eq!(format_bytes(1536 * MIB), "1536MiB");
        assert_eq!(format_bytes(2 << 30), "2GiB");
        assert_eq!(ByteSize(4 << 40).to_string(), "4TiB");
    }

    #[test]
    fn durations_accept_units_and_combinations() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("90d", Duration::from_secs(90 * 86_400)),
            ("1d12h", Duration::from_secs(129_600)),
            ("1m30s", Duration::from_secs(90)),
            ("1h 2m 3s 4ms", Duration::from_millis(3_723_004)),
            (" 10 s ", Duration::from_secs(10)),
            ("0s", Duration::ZERO),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn durations_reject_bad_input_with_a_reason() {
        let bad = |s: &str| parse_duration(s).expect_err(s);
        assert!(matches!(bad(""), UnitError::InvalidDuration { .. }));
        assert!(matches!(bad("   "), UnitError::InvalidDuration { .. }));
        assert!(matches!(bad("soon"), UnitError::InvalidDuration { .. }));
        assert!(matches!(bad("5s!"), UnitError::InvalidDuration { .. }));
        assert!(matches!(bad("1m30"), UnitError::InvalidDuration { .. }));
        assert!(matches!(bad("500"), UnitError::MissingDurationUnit { .. }));
        assert!(matches!(bad("5w"), UnitError::UnknownDurationUnit { .. }));
        assert!(matches!(bad("5S"), UnitError::UnknownDurationUnit { .. }));
        assert!(matches!(bad("-5s"), UnitError::NegativeDuration { .. }));
        assert!(matches!(bad("1.5s"), UnitError::FractionalDuration { .. }));
        assert!(matches!(bad("30s1m"), UnitError::MisorderedDuration { .. }));
        assert!(matches!(bad("1s1s"), UnitError::MisorderedDuration { .. }));
        assert!(matches!(
            bad("99999999999999999999s"),
            UnitError::DurationOverflow { .. }
        ));
        assert!(matches!(
            bad("18446744073709551615h"),
            UnitError::DurationOverflow { .. }
        ));
    }

    #[test]
    fn missing_duration_unit_suggests_one() {
        let msg = parse_duration("500").expect_err("no unit").to_string();
        assert!(msg.contains("\"500ms\""), "{msg}");
    }

    #[derive(serde::Deserialize, Debug)]
    struct Probe {
        size: ByteSize,
        wait: Millis,
    }

    #[test]
    fn serde_adapters_take_integers_or_strings() {
        let p: Probe = toml::from_str("size = 1024\nwait = 1500").expect("integers");
        assert_eq!(p.size, ByteSize(1024));
        assert_eq!(p.wait, Millis(Duration::from_millis(1500)));
        let p: Probe = toml::from_str("size = \"2MiB\"\nwait = \"2s\"").expect("strings");
        assert_eq!(p.size, ByteSize(2 * MIB));
        assert_eq!(p.wait, Millis(Duration::from_secs(2)));
    }

    #[test]
    fn serde_adapter_errors_say_what_was_expected() {
        let err = toml::from_str::<Probe>("size = \"lots\"\nwait = 1")
            .expect_err("bad size")
            .to_string();
        assert!(err.contains("expected a size like \"64MiB\""), "{err}");
        let err = toml::from_str::<Probe>("size = true\nwait = 1")
            .expect_err("wrong type")
            .to_string();
        assert!(err.contains("integer number of bytes"), "{err}");
        let err = toml::from_str::<Probe>("size = -1\nwait = 1")
            .expect_err("negative")
            .to_string();
        assert!(err.contains("integer number of bytes"), "{err}");
        let err = toml::from_str::<Probe>("size = 1\nwait = \"soon\"")
            .expect_err("bad duration")
            .to_string();
        assert!(err.contains("expected a duration like"), "{err}");
    }

    #[test]
    fn key_paths_quote_non_bare_keys() {
        assert_eq!(key_path("", "a"), "a");
        assert_eq!(key_path("component", "hello-1_x"), "component.hello-1_x");
        assert_eq!(key_path("component", "a.b"), "component.\"a.b\"");
        assert_eq!(key_path("component", ""), "component.\"\"");
    }

    #[test]
    fn syntax_errors_are_one_line_and_located() {
        let e = parse_toml("a = 1\n[t\n").expect_err("unclosed");
        assert_eq!((e.line, e.column), (2, 3));
        assert!(e.message.contains("unclosed table"), "{}", e.message);
        let e = parse_toml("a = 1\nb = 2\na = 3\n").expect_err("duplicate");
        assert_eq!(e.line, 3);
        assert_eq!(e.message, "duplicate key `a`");
        assert!(parse_toml("").expect("empty").is_empty());
    }

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let text = "a = 1\nbé = x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'x' sits after a two-byte character: byte 12, column 6.
        assert_eq!(line_col(text, text.find('x').expect("x")), (2, 6));
        // Offsets past the end or inside a character are clamped, not a panic.
        assert_eq!(line_col(text, 1000), (3, 1));
        assert_eq!(line_col("é", 1), (1, 1));
    }

    fn fields(text: &str) -> Fields {
        Fields::new("t", toml::from_str(text).expect("test toml"))
    }

    #[test]
    fn fields_report_missing_and_unknown_keys_with_paths() {
        let mut f = fields("sourc = 1\nother = 2");
        let missing = f.required("source", "a path").expect_err("missing");
        assert_eq!(missing.key, "t.source");
        assert_eq!(missing.problem, "missing; expected a path");
        let unknown = f.finish(&["source", "routes"]).expect_err("unknown");
        assert_eq!(unknown.key, "t.other");
        let mut f = fields("sourc = 1");
        f.take("nothing");
        let typo = f.finish(&["source", "routes"]).expect_err("typo");
        assert_eq!(typo.key, "t.sourc");
        assert!(
            typo.problem
                .contains("unknown key in [t]; expected one of source, routes"),
            "{}",
            typo.problem
        );
        assert!(typo.problem.contains("did you mean \"source\"?"));
        let top = Fields::new("", toml::Table::new());
        assert_eq!(top.finish(&[]), Ok(()));
        let misplaced = fields("app = []")
            .finish_section(&["http"], &["app", "listen"])
            .expect_err("misplaced");
        assert!(
            misplaced
                .problem
                .contains("\"app\" is a top-level key: move it above"),
            "{}",
            misplaced.problem
        );
    }

    #[test]
    fn field_type_mismatches_describe_what_was_found() {
        let mut f = fields("s = 5\nn = \"x\"\na = {}\nt = []\nr = 70000");
        let e = f.take("s").expect("s").string().expect_err("int");
        assert_eq!(
            (e.key.as_str(), e.problem.as_str()),
            ("t.s", "expected a string, got 5")
        );
        let e = f
            .take("n")
            .expect("n")
            .integer_in(0u32, 10)
            .expect_err("str");
        assert_eq!(e.problem, "expected an integer from 0 to 10, got \"x\"");
        let e = f.take("a").expect("a").array().expect_err("table");
        assert_eq!(e.problem, "expected an array, got a table");
        let e = f.take("t").expect("t").table().expect_err("array");
        assert_eq!(e.problem, "expected a table, got an array");
        let e = f
            .take("r")
            .expect("r")
            .integer_in(1u16, u16::MAX)
            .expect_err("range");
        assert_eq!(e.problem, "expected an integer from 1 to 65535, got 70000");
    }

    #[test]
    fn array_elements_get_indexed_paths() {
        let mut f = fields("a = [\"x\", 2]");
        let e = f.take("a").expect("a").strings().expect_err("second");
        assert_eq!(e.key, "t.a[1]");
    }

    #[test]
    fn field_units_accept_integers_and_strings() {
        let mut f = fields("a = 5\nb = \"5KiB\"\nc = -1\nd = \"2s\"\ne = 3\nf = -3\ng = 1.5");
        assert_eq!(f.take("a").expect("a").bytes(), Ok(5));
        assert_eq!(f.take("b").expect("b").bytes(), Ok(5 << 10));
        let e = f.take("c").expect("c").bytes().expect_err("negative");
        assert!(e.problem.contains("negative size"), "{}", e.problem);
        assert_eq!(
            f.take("d").expect("d").duration(),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            f.take("e").expect("e").duration(),
            Ok(Duration::from_millis(3))
        );
        assert!(f.take("f").expect("f").duration().is_err());
        let e = f.take("g").expect("g").bytes().expect_err("float");
        assert!(e.problem.ends_with("got 1.5"), "{}", e.problem);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("routes", "routes"), 0);
        assert_eq!(edit_distance("routes", "route"), 1);
        assert_eq!(edit_distance("routes", "rotues"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
