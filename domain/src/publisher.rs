//! Who may publish where: publishers, their tokens, roles and scopes.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{DepartmentCode, InseeCode, ValueError};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// # Errors
            /// `MalformedUuid` unless the text is a hyphenated UUID.
            pub fn parse(text: &str) -> Result<Self, ValueError> {
                if text.len() != 36 {
                    return Err(ValueError::MalformedUuid);
                }
                Uuid::try_parse(text).map(Self).map_err(|_| ValueError::MalformedUuid)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
    };
}

uuid_id!(
    /// A publisher: a town hall, a prefecture, a school, an association.
    PublisherId
);
uuid_id!(
    /// One bearer token of a publisher (the token itself is a secret; this id is not).
    TokenId
);

/// What a token may do within its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes, and amends or retracts what this token published.
    Editor,
    /// Also amends or retracts every publication of its publisher.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// # Errors
    /// `None` for anything but `editor` or `admin`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Where a publisher may publish: a list of communes (a town hall, an
/// intercommunality) or whole departments (a prefecture).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Communes(BTreeSet<InseeCode>),
    Departments(BTreeSet<DepartmentCode>),
}

impl Scope {
    pub fn contains(&self, commune: &InseeCode) -> bool {
        match self {
            Scope::Communes(communes) => communes.contains(commune),
            Scope::Departments(departments) => departments.contains(&commune.department()),
        }
    }
}

/// The authenticated author of a command: which publisher, through which token,
/// with which role and scope (as the token says at the time of the command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub publisher: PublisherId,
    pub token: TokenId,
    pub role: Role,
    pub scope: Scope,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: &str) -> InseeCode {
        InseeCode::parse(c).unwrap()
    }

    #[test]
    fn a_commune_scope_covers_only_its_communes() {
        let scope = Scope::Communes([code("35238")].into());
        assert!(scope.contains(&code("35238")));
        assert!(!scope.contains(&code("35047")));
    }

    #[test]
    fn a_department_scope_covers_every_commune_of_the_department() {
        let scope = Scope::Departments([DepartmentCode::parse("2A").unwrap()].into());
        assert!(scope.contains(&code("2A004")));
        assert!(!scope.contains(&code("2B033")));
        let overseas = Scope::Departments([DepartmentCode::parse("974").unwrap()].into());
        assert!(overseas.contains(&code("97411")));
        assert!(!overseas.contains(&code("97101")));
    }
}
