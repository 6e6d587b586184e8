//! Passwords, stored only as argon2id hashes in PHC string form
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2};

/// Why a stored hash cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("not a PHC password hash ({0}); create one with `gatehouse users hash-password`")]
    Malformed(String),
    #[error("the hash uses {0}, not argon2id; create one with `gatehouse users hash-password`")]
    NotArgon2id(String),
    #[error("cannot hash the password: {0}")]
    Hashing(String),
}

/// Hashes `password` with argon2id (default parameters, random salt).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Checks that `phc` is an argon2id hash this module can verify against.
pub fn check_hash(phc: &str) -> Result<(), PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(|e| PasswordError::Malformed(e.to_string()))?;
    let alg = parsed.algorithm.as_str();
    if alg != Algorithm::Argon2id.ident().as_str() {
        return Err(PasswordError::NotArgon2id(alg.to_string()));
    }
    Ok(())
}

/// True when `password` matches the argon2id hash `phc`. The comparison
/// is constant-time; the cost is argon2's (tens of milliseconds), so call
/// it off the async executor.
pub fn verify(phc: &str, password: &str) -> Result<bool, PasswordError> {
    check_hash(phc)?;
    let parsed = PasswordHash::new(phc).map_err(|e| PasswordError::Malformed(e.to_string()))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_nothing_else() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert_eq!(verify(&h, "correct horse"), Ok(true));
        assert_eq!(verify(&h, "correct horsf"), Ok(false));
        assert_eq!(verify(&h, ""), Ok(false));
        // Salted: the same password hashes differently each time.
        assert_ne!(hash("correct horse").unwrap(), h);
    }

    #[test]
    fn other_algorithms_and_garbage_are_refused() {
        assert!(matches!(
            check_hash("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA"),
            Err(PasswordError::NotArgon2id(_))
        ));
        assert!(matches!(
            check_hash("hunter2"),
            Err(PasswordError::Malformed(_))
        ));
        assert!(matches!(
            verify("$5$rounds=5000$salt$x", "x"),
            Err(PasswordError::Malformed(_)) | Err(PasswordError::NotArgon2id(_))
        ));
    }
}
