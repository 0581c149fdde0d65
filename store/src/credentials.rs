//! Device (and API token) secrets: generation, hashing, verification.
//!
//! Secrets are 32 random bytes from the operating system, handed out as 64 lowercase hex
//! characters; the registry keeps only their SHA-256.
//!
//! A fast hash is the right choice here, not a password hash such as argon2: these secrets
//! are 256-bit random values, not human passwords, so there is nothing for a slow hash to
//! protect against (no dictionary, 2^256 guesses). A slow hash would only cost the gateway:
//! at tens of milliseconds per argon2 verification, a reconnect storm of 10,000 devices after
//! a network outage would spend minutes of CPU just checking credentials, while SHA-256 takes
//! about a microsecond each.

use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new secret: 32 bytes from the OS random source as 64 lowercase hex characters.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The lowercase hex SHA-256 of `secret`, as stored in the registry.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `hash_hex` (lowercase or uppercase hex). The comparison takes
/// the same time wherever the hashes differ; a malformed `hash_hex` never matches.
pub fn verify_secret(secret: &str, hash_hex: &str) -> bool {
    let Ok(expected) = hex::decode(hash_hex) else {
        return false;
    };
    let actual = Sha256::digest(secret.as_bytes());
    // Lengths are public (a SHA-256 is always 32 bytes); ct_eq returns false on a mismatch.
    actual.as_slice().ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_64_lowercase_hex_and_differ() {
        let a = generate_secret();
        let b = generate_secret();
        assert_eq!(a.len(), 64);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_ne!(a, b);
    }

    #[test]
    fn known_hash() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify() {
        let secret = generate_secret();
        let hash = hash_secret(&secret);
        assert!(verify_secret(&secret, &hash));
        assert!(verify_secret(&secret, &hash.to_uppercase()));
        assert!(!verify_secret("wrong", &hash));
        assert!(!verify_secret(&secret, "not hex"));
        assert!(!verify_secret(&secret, &hash[..62]));
        assert!(!verify_secret(&secret, ""));
    }
}
