//! Devices that asked for push notifications: their platform, push token and
//! language. Value types only; devices are state, not event-sourced.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::values::ValueError;

/// The push service a device is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Firebase Cloud Messaging (Android, and iOS apps that use it).
    Fcm,
    /// Apple Push Notification service.
    Apns,
    /// Web Push (RFC 8030) for the web app.
    Webpush,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Fcm => "fcm",
            Platform::Apns => "apns",
            Platform::Webpush => "webpush",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "fcm" => Some(Platform::Fcm),
            "apns" => Some(Platform::Apns),
            "webpush" => Some(Platform::Webpush),
            _ => None,
        }
    }
}

/// A push token as the platform gave it to the app: 1–4,096 visible characters
/// (for Web Push, the JSON of the browser's push subscription). Not printable by
/// accident: it identifies a phone.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct PushToken(String);

/// Written as its text, borrowed (`into = "String"` would copy it first).
impl Serialize for PushToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl PushToken {
    pub const MAX_CHARS: usize = 4_096;

    /// # Errors
    /// `Blank`, `TooLong`, or `ControlCharacter`.
    pub fn parse(text: impl Into<String>) -> Result<Self, ValueError> {
        let text = text.into();
        if text.trim().is_empty() {
            return Err(ValueError::Blank);
        }
        let actual = text.chars().count();
        if actual > Self::MAX_CHARS {
            return Err(ValueError::TooLong {
                max: Self::MAX_CHARS,
                actual,
            });
        }
        if text.chars().any(char::is_control) {
            return Err(ValueError::ControlCharacter {
                line_breaks_allowed: false,
            });
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PushToken {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl fmt::Debug for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushToken({} chars)", self.0.chars().count())
    }
}

/// A BCP 47 language tag such as `fr`, `fr-FR`, `br` or `oc`: 2–35 characters,
/// letters and digits in hyphen-separated subtags of at most 8.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Locale(String);

/// Written as its text, borrowed (`into = "String"` would copy it first).
impl Serialize for Locale {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl Locale {
    /// # Errors
    /// `MalformedLocale` unless the text is a language tag.
    pub fn parse(text: impl Into<String>) -> Result<Self, ValueError> {
        let text = text.into();
        let subtags_ok = text
            .split('-')
            .all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()));
        let first_ok = text.split('-').next().is_some_and(|s| {
            (2..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic())
        });
        if (2..=35).contains(&text.len()) && subtags_ok && first_ok {
            Ok(Self(text))
        } else {
            Err(ValueError::MalformedLocale)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Locale {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl fmt::Debug for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locale({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_are_language_tags() {
        for ok in ["fr", "fr-FR", "br", "oc", "de-CH-1996", "zh-Hant"] {
            assert!(Locale::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "f",
            "fr_FR",
            "fr-",
            "12",
            "français",
            "fr-FR-verylongsubtag",
        ] {
            assert_eq!(
                Locale::parse(bad),
                Err(ValueError::MalformedLocale),
                "{bad}"
            );
        }
    }

    #[test]
    fn push_tokens_are_bounded_and_never_printed() {
        assert!(PushToken::parse("x".repeat(4096)).is_ok());
        assert!(PushToken::parse("x".repeat(4097)).is_err());
        assert!(PushToken::parse("").is_err());
        assert!(PushToken::parse("a\nb").is_err());
        assert_eq!(
            format!("{:?}", PushToken::parse("secret-token").unwrap()),
            "PushToken(12 chars)"
        );
    }

    #[test]
    fn platforms_have_stable_names() {
        for p in [Platform::Fcm, Platform::Apns, Platform::Webpush] {
            assert_eq!(Platform::parse(p.as_str()), Some(p));
        }
        assert_eq!(Platform::parse("sms"), None);
    }
}
