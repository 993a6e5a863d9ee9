//! Password hashes as RabbitMQ keeps them (`rabbit_password`), so that a definitions
//! file moves between RabbitMQ and Warren with its users able to log in.
//!
//! A hash is a 4-byte random salt followed by `H(salt ‖ password)`, where `H` is the
//! user's hashing algorithm (SHA-256 by default; SHA-512 and MD5 are read too), and a
//! definitions file holds it in standard base64 as `password_hash`, beside
//! `hashing_algorithm`. A user without a password hash cannot log in with one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::Md5;
use rand::RngCore as _;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq as _;

/// Bytes of random salt in front of a hash.
const SALT_LEN: usize = 4;

/// A hashing algorithm RabbitMQ names in its definitions (`hashing_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// `rabbit_password_hashing_sha256`, RabbitMQ's default.
    #[default]
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    Sha512,
    /// `rabbit_password_hashing_md5`, from RabbitMQ before 3.6.
    Md5,
}

impl Algorithm {
    /// The name RabbitMQ writes in `hashing_algorithm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "rabbit_password_hashing_sha256",
            Self::Sha512 => "rabbit_password_hashing_sha512",
            Self::Md5 => "rabbit_password_hashing_md5",
        }
    }

    /// The algorithm of a `hashing_algorithm` name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Sha256, Self::Sha512, Self::Md5]
            .into_iter()
            .find(|a| a.name() == name)
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        fn run<D: sha2::Digest>(salt: &[u8], password: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update(salt);
            d.update(password);
            d.finalize().to_vec()
        }
        match self {
            Self::Sha256 => run::<Sha256>(salt, password),
            Self::Sha512 => run::<Sha512>(salt, password),
            Self::Md5 => run::<Md5>(salt, password),
        }
    }
}

/// A user's stored password: salt and hash, with the algorithm that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash {
    algorithm: Algorithm,
    /// Salt, then digest.
    bytes: Vec<u8>,
}

/// Why a stored hash could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// `password_hash` is not standard base64.
    #[error("password_hash is not base64")]
    NotBase64,
    /// It is too short to hold a salt and a digest of its algorithm.
    #[error("password_hash holds {0} bytes, not a salt and a {1} digest")]
    WrongLength(usize, &'static str),
    /// `hashing_algorithm` names an algorithm Warren does not know.
    #[error("unknown hashing_algorithm '{0}'")]
    UnknownAlgorithm(String),
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(algorithm: Algorithm, password: &str) -> Self {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        Self::with_salt(algorithm, salt, password)
    }

    /// Hashes `password` with `salt` (tests, and RabbitMQ's layout spelled out).
    pub fn with_salt(algorithm: Algorithm, salt: [u8; SALT_LEN], password: &str) -> Self {
        let mut bytes = salt.to_vec();
        bytes.extend(algorithm.digest(&salt, password.as_bytes()));
        Self { algorithm, bytes }
    }

    /// Reads a definitions file's `password_hash` (base64) under `hashing_algorithm`.
    ///
    /// # Errors
    /// Not base64, the wrong length for the algorithm, or an unknown algorithm.
    pub fn from_base64(algorithm: &str, encoded: &str) -> Result<Self, HashError> {
        let algorithm = Algorithm::from_name(algorithm)
            .ok_or_else(|| HashError::UnknownAlgorithm(algorithm.to_owned()))?;
        let bytes = STANDARD
            .decode(encoded.trim())
            .map_err(|_| HashError::NotBase64)?;
        let digest_len = algorithm.digest(&[], &[]).len();
        if bytes.len() != SALT_LEN + digest_len {
            let name = match algorithm {
                Algorithm::Sha256 => "SHA-256",
                Algorithm::Sha512 => "SHA-512",
                Algorithm::Md5 => "MD5",
            };
            return Err(HashError::WrongLength(bytes.len(), name));
        }
        Ok(Self { algorithm, bytes })
    }

    /// The hash as a definitions file holds it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.bytes)
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `password` is the one hashed, compared in constant time.
    pub fn matches(&self, password: &str) -> bool {
        let (salt, digest) = self.bytes.split_at(SALT_LEN.min(self.bytes.len()));
        let candidate = self.algorithm.digest(salt, password.as_bytes());
        candidate.ct_eq(digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn rabbitmqs_layout_salt_then_digest_of_salt_and_password() {
        // Computed independently: base64(salt ‖ sha256(salt ‖ "guest")).
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let hash = PasswordHash::with_salt(Algorithm::Sha256, salt, "guest");
        let mut expected = salt.to_vec();
        expected.extend(Sha256::digest([&salt[..], b"guest"].concat()));
        assert_eq!(hash.to_base64(), STANDARD.encode(&expected));
        let back = PasswordHash::from_base64(Algorithm::Sha256.name(), &hash.to_base64())
            .expect("reads back");
        assert!(back.matches("guest"));
        assert!(!back.matches("guesT"));
        assert!(!back.matches(""));
    }

    #[test]
    fn hashes_exported_by_a_rabbitmq_3_10_node_log_in() {
        // From `rabbitmqctl export_definitions` of users made with these passwords
        // (docs/security-rabbitmq-facts.md §8), and one computed the same way.
        let vectors = [
            (
                "S3cret!",
                Algorithm::Sha256,
                "pN24jplSUSv7Yu5HzBEA0IqNcCXc9PUBhLw7VnzNcefeHLp3",
            ),
            (
                "p@ss512",
                Algorithm::Sha512,
                "sX+7VOo5St/pjBqZYOjn9rY4/EGOaAFx0WHmbX+l3hONgJmtcDJ8LtncPsb6ylLPbzGWQ3eBCmui5EuUWWMAsGt6WlI=",
            ),
            ("md5pass", Algorithm::Md5, "kMq1Jnrv/AITc25zMHwErB+X0QA="),
            (
                "guest",
                Algorithm::Sha256,
                "kI0sXB9Upn9g10K6b6GPgA041210mCcPHea+fWm3oyPmPGD9",
            ),
            (
                "pässwörd",
                Algorithm::Sha256,
                "AQIDBPwtq5ZIwNBPpzi5rjcenzm3jkMbdjQ9/km2mOuj20ER",
            ),
        ];
        for (password, algorithm, encoded) in vectors {
            let hash = PasswordHash::from_base64(algorithm.name(), encoded).expect("reads");
            assert!(hash.matches(password), "{password}");
            assert!(!hash.matches("wrong"));
            assert_eq!(hash.to_base64(), encoded);
        }
        let salt = [1, 2, 3, 4];
        assert_eq!(
            PasswordHash::with_salt(Algorithm::Sha256, salt, "pässwörd").to_base64(),
            "AQIDBPwtq5ZIwNBPpzi5rjcenzm3jkMbdjQ9/km2mOuj20ER"
        );
    }

    #[test]
    fn every_algorithm_round_trips_and_salts_differ() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Md5] {
            let a = PasswordHash::new(algorithm, "s3cret é");
            let b = PasswordHash::new(algorithm, "s3cret é");
            assert!(a.matches("s3cret é") && b.matches("s3cret é"));
            let read = PasswordHash::from_base64(algorithm.name(), &a.to_base64()).expect("read");
            assert_eq!(read, a);
            assert_eq!(Algorithm::from_name(algorithm.name()), Some(algorithm));
        }
    }

    #[test]
    fn bad_stored_hashes_are_refused_not_misread() {
        let sha = Algorithm::Sha256.name();
        assert_eq!(
            PasswordHash::from_base64(sha, "not base64!"),
            Err(HashError::NotBase64)
        );
        assert_eq!(
            PasswordHash::from_base64(sha, "AAAA"),
            Err(HashError::WrongLength(3, "SHA-256"))
        );
        assert_eq!(
            PasswordHash::from_base64("rabbit_password_hashing_bcrypt", "AAAA"),
            Err(HashError::UnknownAlgorithm(
                "rabbit_password_hashing_bcrypt".into()
            ))
        );
    }
}
