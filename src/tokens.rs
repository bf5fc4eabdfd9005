//! Publisher bearer tokens: how they are made and how they are stored (hashed).

use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Hashes tokens for storage and lookup: HMAC-SHA-256 keyed with the server's
/// pepper (a secret from Vault) when there is one, so that a leaked database
/// alone does not allow checking guesses; SHA-256 otherwise (development).
/// A token is 256 random bits, so no slow hash is needed.
#[derive(Clone, Default)]
pub struct TokenHasher {
    pepper: Option<SecretString>,
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHasher")
            .field("peppered", &self.pepper.is_some())
            .finish()
    }
}

impl TokenHasher {
    pub fn new(pepper: Option<SecretString>) -> Self {
        Self { pepper }
    }

    pub fn hash(&self, token: &str) -> [u8; 32] {
        match &self.pepper {
            Some(pepper) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(pepper.expose_secret().as_bytes())
                    .expect("HMAC takes any key length");
                mac.update(token.as_bytes());
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(token.as_bytes()).into(),
        }
    }
}

/// A new bearer token: `pnn_` and 256 random bits, base64url.
///
/// # Errors
/// When the system has no randomness to give.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "pnn_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pepper_changes_the_stored_hash() {
        let plain = TokenHasher::default();
        let peppered = TokenHasher::new(Some(SecretString::from("pepper".to_owned())));
        assert_ne!(plain.hash("pnn_x"), peppered.hash("pnn_x"));
        assert_eq!(peppered.hash("pnn_x"), peppered.hash("pnn_x"));
        assert_eq!(format!("{peppered:?}"), "TokenHasher { peppered: true }");
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert!(a.starts_with("pnn_") && a.len() == 47);
        assert_ne!(a, b);
    }
}
