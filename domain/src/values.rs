//! Value types that can only hold valid values.
//!
//! Each type has private fields and one fallible constructor, which serde also
//! goes through (`try_from`), so an invalid commune code, title or URL cannot exist
//! past the edge that parsed it. Every limit of the HTTP contract lives here.
//!
//! These types are also the stored form of events: tightening a limit here would
//! make old events undecodable, so a stricter rule belongs in `decide` (with an
//! upcaster if needed), never in a constructor. The golden fixtures catch a slip.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::Timestamp;

/// Why a value was refused. The HTTP edge turns each into a field error (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("expected an INSEE commune code: 5 digits, or 2A/2B and 3 digits (e.g. 35238, 2A004)")]
    MalformedInseeCode,
    #[error("expected a department code such as 35, 2A or 974")]
    MalformedDepartmentCode,
    #[error("expected a UUIDv7 such as 01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69")]
    MalformedPublicationId,
    #[error("expected a UUID")]
    MalformedUuid,
    #[error("must not be empty or only spaces")]
    Blank,
    #[error("must be at most {max} characters (got {actual})")]
    TooLong { max: usize, actual: usize },
    #[error("must not contain control characters{}", if *.line_breaks_allowed { " other than line breaks and tabs" } else { "" })]
    ControlCharacter { line_breaks_allowed: bool },
    #[error(
        "must be an https:// URL with a host, at most 2048 characters, without spaces or credentials"
    )]
    NotHttpsUrl,
    #[error("expected a media type such as application/pdf")]
    MalformedContentType,
    #[error("at most {max} attachments (got {actual})")]
    TooManyAttachments { max: usize, actual: usize },
    #[error("at least one commune is required")]
    NoCommune,
    #[error("at most {max} communes (got {actual})")]
    TooManyCommunes { max: usize, actual: usize },
    #[error("commune {0} is listed twice")]
    DuplicateCommune(InseeCode),
    #[error("visible_until must be after visible_from")]
    WindowEndsBeforeStart,
    #[error("expected a request id of 1 to 128 visible ASCII characters")]
    MalformedRequestId,
    #[error("expected a stream id of 1 to 100 visible ASCII characters")]
    MalformedStreamId,
    #[error("expected a language tag such as fr or fr-FR")]
    MalformedLocale,
}

/// An INSEE commune code ("code officiel géographique"): `35238` (Rennes), `2A004`
/// (Ajaccio), `97411` (Saint-Denis, La Réunion). Whether the commune exists is
/// checked against the reference data at the edge; this type guarantees the form.
///
/// Encoded as its text, like a `String`, but read and written without
/// allocating one: a department-wide publication carries hundreds of codes,
/// decoded for each of its communes' boards.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InseeCode([u8; 5]);

impl Serialize for InseeCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for InseeCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = InseeCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<InseeCode, E> {
                InseeCode::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

impl InseeCode {
    /// # Errors
    /// `MalformedInseeCode` unless the text is 5 digits or `2A`/`2B` and 3 digits
    /// (lower-case `2a`/`2b` are accepted and normalised).
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let bytes = text.as_bytes();
        if bytes.len() != 5 {
            return Err(ValueError::MalformedInseeCode);
        }
        let mut code = [0u8; 5];
        code.copy_from_slice(bytes);
        code[1] = code[1].to_ascii_uppercase();
        let corsica = code[0] == b'2' && matches!(code[1], b'A' | b'B');
        let head_ok = code[0].is_ascii_digit() && (code[1].is_ascii_digit() || corsica);
        if !head_ok || !code[2..].iter().all(u8::is_ascii_digit) {
            return Err(ValueError::MalformedInseeCode);
        }
        // No department 00, and 20 was split into 2A and 2B in 1976.
        if &code[..2] == b"00" || &code[..2] == b"20" {
            return Err(ValueError::MalformedInseeCode);
        }
        Ok(Self(code))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("an INSEE code is ASCII")
    }

    /// The department the commune belongs to: the first two characters, or three
    /// for the overseas departments and collectivities (97x, 98x).
    pub fn department(&self) -> DepartmentCode {
        let len = if self.0.starts_with(b"97") || self.0.starts_with(b"98") {
            3
        } else {
            2
        };
        let mut code = [0u8; 3];
        code[..len].copy_from_slice(&self.0[..len]);
        DepartmentCode {
            code,
            len: len as u8,
        }
    }
}

impl TryFrom<String> for InseeCode {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl fmt::Display for InseeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for InseeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InseeCode({})", self.as_str())
    }
}

/// A department code: `01`–`95` (without `20`), `2A`, `2B`, `971`–`978`, `984`–`989`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct DepartmentCode {
    code: [u8; 3],
    len: u8,
}

impl DepartmentCode {
    /// # Errors
    /// `MalformedDepartmentCode` unless the text is one of the forms above.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let upper = text.to_ascii_uppercase();
        let valid = match upper.as_bytes() {
            [b'2', b'A' | b'B'] => true,
            [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                let n = (a - b'0') * 10 + (b - b'0');
                (1..=95).contains(&n) && n != 20
            }
            [b'9', b'7', c] => (b'1'..=b'8').contains(c),
            [b'9', b'8', c] => (b'4'..=b'9').contains(c),
            _ => false,
        };
        if !valid {
            return Err(ValueError::MalformedDepartmentCode);
        }
        let mut code = [0u8; 3];
        code[..upper.len()].copy_from_slice(upper.as_bytes());
        Ok(Self {
            code,
            len: upper.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.code[..usize::from(self.len)])
            .expect("a department code is ASCII")
    }
}

impl Serialize for DepartmentCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl TryFrom<String> for DepartmentCode {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl fmt::Display for DepartmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DepartmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DepartmentCode({})", self.as_str())
    }
}

/// The id of a publication: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Uuid", into = "Uuid")]
pub struct PublicationId(Uuid);

impl PublicationId {
    /// # Errors
    /// `MalformedPublicationId` unless `uuid` is a version 7 UUID.
    pub fn new(uuid: Uuid) -> Result<Self, ValueError> {
        if uuid.get_version_num() == 7 {
            Ok(Self(uuid))
        } else {
            Err(ValueError::MalformedPublicationId)
        }
    }

    /// # Errors
    /// `MalformedPublicationId` unless the text is a hyphenated UUIDv7.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        if text.len() != 36 {
            return Err(ValueError::MalformedPublicationId);
        }
        let uuid = Uuid::try_parse(text).map_err(|_| ValueError::MalformedPublicationId)?;
        Self::new(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl TryFrom<Uuid> for PublicationId {
    type Error = ValueError;
    fn try_from(value: Uuid) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<PublicationId> for Uuid {
    fn from(value: PublicationId) -> Self {
        value.0
    }
}

impl fmt::Display for PublicationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for PublicationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicationId({})", self.0.hyphenated())
    }
}

/// Checks shared by the text types: not blank, not too long (in characters, as a
/// reader counts them, not bytes), no control characters.
fn check_text(text: &str, max: usize, line_breaks_allowed: bool) -> Result<(), ValueError> {
    if text.trim().is_empty() {
        return Err(ValueError::Blank);
    }
    let actual = text.chars().count();
    if actual > max {
        return Err(ValueError::TooLong { max, actual });
    }
    let forbidden =
        |c: char| c.is_control() && !(line_breaks_allowed && matches!(c, '\n' | '\r' | '\t'));
    if text.chars().any(forbidden) {
        return Err(ValueError::ControlCharacter {
            line_breaks_allowed,
        });
    }
    Ok(())
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, max = $max:expr, line_breaks = $breaks:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        /// Written as its text, borrowed (`into = "String"` would copy it first).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl $name {
            pub const MAX_CHARS: usize = $max;

            /// # Errors
            /// `Blank`, `TooLong` or `ControlCharacter`.
            pub fn parse(text: impl Into<String>) -> Result<Self, ValueError> {
                let text = text.into();
                check_text(&text, Self::MAX_CHARS, $breaks)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

text_type!(
    /// A publication's title: 1–140 characters on one line, plain text, stored as given.
    Title, max = 140, line_breaks = false
);
text_type!(
    /// A publication's body: 1–8,000 characters, plain text (line breaks kept), stored as given.
    Body, max = 8_000, line_breaks = true
);
text_type!(
    /// The name shown for an attachment, e.g. "Arrêté municipal n° 2026-14.pdf".
    AttachmentName, max = 200, line_breaks = false
);

/// What a publication is about. The app picks an icon from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Info,
    Alert,
    Event,
    Roadworks,
    School,
    Health,
    Weather,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Info,
        Category::Alert,
        Category::Event,
        Category::Roadworks,
        Category::School,
        Category::Health,
        Category::Weather,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Info => "info",
            Category::Alert => "alert",
            Category::Event => "event",
            Category::Roadworks => "roadworks",
            Category::School => "school",
            Category::Health => "health",
            Category::Weather => "weather",
        }
    }
}

/// Urgent publications come first in feeds and are pushed at high priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Normal,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Urgent => "urgent",
        }
    }
}

/// An `https://` URL with a host, no credentials and no whitespace, at most 2,048
/// characters. Only https, so an attachment link can never downgrade the app.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpsUrl(String);

impl Serialize for HttpsUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl HttpsUrl {
    pub const MAX_CHARS: usize = 2_048;

    /// # Errors
    /// `NotHttpsUrl` when the scheme is not https, the host is missing, or the URL
    /// holds whitespace, control characters or user credentials.
    pub fn parse(text: impl Into<String>) -> Result<Self, ValueError> {
        let text = text.into();
        let rest = text
            .strip_prefix("https://")
            .ok_or(ValueError::NotHttpsUrl)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let valid = text.len() <= Self::MAX_CHARS
            && !host.is_empty()
            && !authority.contains('@')
            && !text.chars().any(|c| c.is_whitespace() || c.is_control());
        if valid {
            Ok(Self(text))
        } else {
            Err(ValueError::NotHttpsUrl)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HttpsUrl {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl fmt::Debug for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpsUrl({:?})", self.0)
    }
}

/// A media type such as `application/pdf` or `image/jpeg` (RFC 6838 names, no parameters).
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ContentType(String);

impl Serialize for ContentType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl ContentType {
    /// # Errors
    /// `MalformedContentType` unless the text is `type/subtype` made of RFC 6838 characters.
    pub fn parse(text: impl Into<String>) -> Result<Self, ValueError> {
        let text = text.into();
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 127
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        match text.split_once('/') {
            Some((kind, sub)) if name_ok(kind) && name_ok(sub) => Ok(Self(text)),
            _ => Err(ValueError::MalformedContentType),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContentType {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl fmt::Debug for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentType({:?})", self.0)
    }
}

/// A document linked from a publication (a PDF decree, a poster, a map).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub url: HttpsUrl,
    pub name: AttachmentName,
    pub content_type: ContentType,
}

/// At most ten attachments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "Vec<Attachment>")]
pub struct Attachments(Vec<Attachment>);

/// Written as the list, borrowed (`into` would copy every attachment first).
impl Serialize for Attachments {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Attachments {
    pub const MAX: usize = 10;

    /// # Errors
    /// `TooManyAttachments` beyond ten.
    pub fn new(list: Vec<Attachment>) -> Result<Self, ValueError> {
        if list.len() > Self::MAX {
            return Err(ValueError::TooManyAttachments {
                max: Self::MAX,
                actual: list.len(),
            });
        }
        Ok(Self(list))
    }

    pub fn as_slice(&self) -> &[Attachment] {
        &self.0
    }
}

impl TryFrom<Vec<Attachment>> for Attachments {
    type Error = ValueError;
    fn try_from(value: Vec<Attachment>) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// The communes a publication is for: at least one, each once, and at most 1,000
/// (the largest department, Pas-de-Calais, has 890), so a prefecture can address a
/// whole department in one publication. Kept sorted.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "Vec<InseeCode>")]
pub struct CommuneSet(BTreeSet<InseeCode>);

/// Written as a list in order, borrowed (`into` would copy the set into a `Vec` first).
impl Serialize for CommuneSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.0)
    }
}

impl CommuneSet {
    pub const MAX: usize = 1_000;

    /// # Errors
    /// `NoCommune`, `TooManyCommunes`, or `DuplicateCommune` for a code listed twice.
    pub fn new(list: Vec<InseeCode>) -> Result<Self, ValueError> {
        if list.is_empty() {
            return Err(ValueError::NoCommune);
        }
        if list.len() > Self::MAX {
            return Err(ValueError::TooManyCommunes {
                max: Self::MAX,
                actual: list.len(),
            });
        }
        let mut set = BTreeSet::new();
        for code in list {
            if !set.insert(code) {
                return Err(ValueError::DuplicateCommune(code));
            }
        }
        Ok(Self(set))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &InseeCode> + '_ {
        self.0.iter()
    }

    pub fn contains(&self, code: &InseeCode) -> bool {
        self.0.contains(code)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_set(&self) -> &BTreeSet<InseeCode> {
        &self.0
    }
}

impl TryFrom<Vec<InseeCode>> for CommuneSet {
    type Error = ValueError;
    fn try_from(value: Vec<InseeCode>) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl fmt::Debug for CommuneSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.0.iter().map(InseeCode::as_str))
            .finish()
    }
}

/// When a publication may be shown: from `from` (or as soon as it is live) until
/// `until` (or forever). `until` is always after `from`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "WindowParts", into = "WindowParts")]
pub struct VisibilityWindow {
    from: Option<Timestamp>,
    until: Option<Timestamp>,
}

#[derive(Serialize, Deserialize)]
struct WindowParts {
    from: Option<Timestamp>,
    until: Option<Timestamp>,
}

impl VisibilityWindow {
    /// # Errors
    /// `WindowEndsBeforeStart` when `until` is not after `from`.
    pub fn new(from: Option<Timestamp>, until: Option<Timestamp>) -> Result<Self, ValueError> {
        if let (Some(from), Some(until)) = (from, until)
            && until <= from
        {
            return Err(ValueError::WindowEndsBeforeStart);
        }
        Ok(Self { from, until })
    }

    pub fn from(&self) -> Option<Timestamp> {
        self.from
    }

    pub fn until(&self) -> Option<Timestamp> {
        self.until
    }
}

impl TryFrom<WindowParts> for VisibilityWindow {
    type Error = ValueError;
    fn try_from(value: WindowParts) -> Result<Self, Self::Error> {
        Self::new(value.from, value.until)
    }
}

impl From<VisibilityWindow> for WindowParts {
    fn from(value: VisibilityWindow) -> Self {
        Self {
            from: value.from,
            until: value.until,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insee_codes_of_mainland_corsica_and_overseas_are_accepted() {
        for code in [
            "35238", "42218", "2A004", "2B033", "97411", "98735", "01001",
        ] {
            assert_eq!(InseeCode::parse(code).unwrap().as_str(), code);
        }
        assert_eq!(InseeCode::parse("2a004").unwrap().as_str(), "2A004");
    }

    #[test]
    fn malformed_insee_codes_are_refused() {
        for code in [
            "",
            "3523",
            "352380",
            "3523A",
            "2C004",
            "20004",
            "00123",
            "35 38",
            "３５２３８",
        ] {
            assert_eq!(
                InseeCode::parse(code),
                Err(ValueError::MalformedInseeCode),
                "{code}"
            );
        }
    }

    #[test]
    fn insee_codes_are_read_and_written_as_their_text() {
        let code = InseeCode::parse("2A004").unwrap();
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"2A004\"");
        // From a borrowed text, from an owned one (a reader), normalised.
        assert_eq!(
            serde_json::from_str::<InseeCode>("\"2a004\"").unwrap(),
            code
        );
        assert_eq!(
            serde_json::from_reader::<_, InseeCode>(&b"\"2A004\""[..]).unwrap(),
            code
        );
        let refused = serde_json::from_str::<InseeCode>("\"20004\"").unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with(&ValueError::MalformedInseeCode.to_string()),
            "{refused}"
        );
        let number = serde_json::from_str::<InseeCode>("35238").unwrap_err();
        assert!(number.to_string().contains("expected a string"), "{number}");
    }

    #[test]
    fn a_commune_knows_its_department() {
        let dep = |c: &str| {
            InseeCode::parse(c)
                .unwrap()
                .department()
                .as_str()
                .to_owned()
        };
        assert_eq!(dep("35238"), "35");
        assert_eq!(dep("2A004"), "2A");
        assert_eq!(dep("97411"), "974");
        assert_eq!(dep("98735"), "987");
    }

    #[test]
    fn department_codes_follow_the_official_list() {
        for ok in [
            "01", "35", "95", "2A", "2b", "971", "976", "978", "984", "989",
        ] {
            assert!(DepartmentCode::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "0", "00", "20", "96", "2C", "970", "979", "983", "990", "350",
        ] {
            assert_eq!(
                DepartmentCode::parse(bad),
                Err(ValueError::MalformedDepartmentCode),
                "{bad}"
            );
        }
    }

    #[test]
    fn publication_ids_must_be_uuid_v7() {
        assert!(PublicationId::parse("01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69").is_ok());
        // A v4 UUID, a bare UUID without hyphens, and garbage are all refused.
        for bad in [
            "0b5e7a4e-3f2c-4d9b-8a1e-6c5d4b3a2f10",
            "01936f5e8f3a7c3b9a6e3f1d2c4b5a69",
            "x",
        ] {
            assert_eq!(
                PublicationId::parse(bad),
                Err(ValueError::MalformedPublicationId),
                "{bad}"
            );
        }
    }

    #[test]
    fn title_length_counts_characters_not_bytes() {
        assert!(Title::parse("é".repeat(140)).is_ok());
        assert_eq!(
            Title::parse("é".repeat(141)),
            Err(ValueError::TooLong {
                max: 140,
                actual: 141
            })
        );
        assert_eq!(Title::parse("   "), Err(ValueError::Blank));
        assert_eq!(Title::parse(""), Err(ValueError::Blank));
    }

    #[test]
    fn titles_are_one_line_but_bodies_keep_line_breaks() {
        assert!(Title::parse("Coupure d'eau\nrue des Lilas").is_err());
        assert!(Body::parse("Coupure d'eau\nrue des Lilas\tde 8 h à 12 h").is_ok());
        assert!(Body::parse("bip\u{7}").is_err());
        assert!(Body::parse("x".repeat(8_000)).is_ok());
        assert!(Body::parse("x".repeat(8_001)).is_err());
    }

    #[test]
    fn text_is_kept_exactly_as_given() {
        let raw = "<b>Fête</b> & \"kermesse\" — 14 h";
        assert_eq!(Title::parse(raw).unwrap().as_str(), raw);
    }

    #[test]
    fn only_https_urls_with_a_host_are_accepted() {
        assert!(HttpsUrl::parse("https://mairie.example.fr/arrete.pdf").is_ok());
        assert!(HttpsUrl::parse("https://mairie.example.fr:8443/a?b=c#d").is_ok());
        for bad in [
            "http://mairie.example.fr/a.pdf",
            "https://",
            "https:///a.pdf",
            "https://user:pw@mairie.example.fr/",
            "https://mairie.example.fr/a b.pdf",
            "javascript:alert(1)",
            "HTTPS//x",
        ] {
            assert_eq!(HttpsUrl::parse(bad), Err(ValueError::NotHttpsUrl), "{bad}");
        }
    }

    #[test]
    fn content_types_are_media_types() {
        assert!(ContentType::parse("application/pdf").is_ok());
        assert!(ContentType::parse("image/svg+xml").is_ok());
        for bad in ["pdf", "application/", "/pdf", "text/html; charset=utf-8"] {
            assert!(ContentType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attachments_are_limited_to_ten() {
        let one = Attachment {
            url: HttpsUrl::parse("https://a.fr/x.pdf").unwrap(),
            name: AttachmentName::parse("x.pdf").unwrap(),
            content_type: ContentType::parse("application/pdf").unwrap(),
        };
        assert!(Attachments::new(vec![one.clone(); 10]).is_ok());
        assert_eq!(
            Attachments::new(vec![one; 11]),
            Err(ValueError::TooManyAttachments {
                max: 10,
                actual: 11
            })
        );
    }

    #[test]
    fn commune_sets_refuse_empty_and_duplicate_lists() {
        let rennes = InseeCode::parse("35238").unwrap();
        assert_eq!(CommuneSet::new(vec![]), Err(ValueError::NoCommune));
        assert_eq!(
            CommuneSet::new(vec![rennes, rennes]),
            Err(ValueError::DuplicateCommune(rennes))
        );
    }

    #[test]
    fn a_window_must_end_after_it_starts() {
        let t = Timestamp::from_unix_micros(1_000);
        assert_eq!(
            VisibilityWindow::new(Some(t), Some(t)),
            Err(ValueError::WindowEndsBeforeStart)
        );
        assert!(VisibilityWindow::new(Some(t), Some(t.plus_micros(1))).is_ok());
        assert!(VisibilityWindow::new(None, Some(t)).is_ok());
    }

    #[test]
    fn serde_goes_through_the_constructors() {
        assert!(serde_json::from_str::<Title>("\"\"").is_err());
        assert!(serde_json::from_str::<InseeCode>("\"1234\"").is_err());
        assert!(serde_json::from_str::<Category>("\"party\"").is_err());
        assert_eq!(
            serde_json::from_str::<Category>("\"roadworks\"").unwrap(),
            Category::Roadworks
        );
    }
}
