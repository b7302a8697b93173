//! What gateways and automation prove themselves with: ASE's sideband tokens (`ASE-Token`),
//! the sideband authentication switch, and the management REST API's secret key. Only
//! SHA-256 digests are kept (a token is shown once, when it is created), in
//! `credentials.json` in the state directory, written whole and renamed. The configuration
//! gives the authentication switch its first value; a change by the CLI or REST wins from
//! then on, as ASE's switches do. Checks on the request path take a read lock and one
//! digest.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::switches::write_atomically;
use crate::config::Config;
use crate::control::answer::{SidebandCredentials, TokenView};
use crate::control::proto::CredentialAction;

/// What `credentials.json` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Saved {
    /// Sideband authentication, if set by the CLI or REST.
    pub sideband_authentication: Option<bool>,
    /// The sideband tokens, as digests.
    pub sideband_tokens: Vec<TokenRecord>,
    /// The REST API's secret key, salted and digested.
    pub rest_secret: Option<SecretRecord>,
}

/// One sideband token as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// Its first four characters, to tell tokens apart in a listing.
    pub hint: String,
    /// Unix seconds.
    pub created: i64,
}

/// The REST secret key as kept: PBKDF2-HMAC-SHA256 of the key with a random salt, so a
/// copied file does not give the key up to a fast guesser.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Random salt, hex.
    pub salt: String,
    /// The derived key, hex (the field's name is kept from the first format).
    pub sha256: String,
    /// PBKDF2 iterations; 0: one SHA-256 of salt and key (the first format).
    #[serde(default)]
    pub iterations: u32,
}

/// PBKDF2 iterations for a new REST secret: about 50 ms of one core per check, paid only
/// by a key not checked before (see `Credentials::check_secret`).
const SECRET_ITERATIONS: u32 = 100_000;

/// The REST secret in force: salt, derived key, iterations.
type Secret = ([u8; 16], [u8; 32], u32);

/// How a REST request's secret key fares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretCheck {
    /// It matches.
    Good,
    /// It does not.
    Wrong,
    /// No key has been set yet (`portcullis rest password`): every request is refused.
    Unset,
}

/// Why a credential change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Not a token ASE would accept.
    #[error("a sideband token is 32 characters, lowercase letters and digits")]
    BadToken,
    /// A secret key too short or too long.
    #[error("the secret key must be 8 to 256 characters, without control characters")]
    BadSecret,
    /// The token is already there.
    #[error("this sideband token exists already")]
    Exists,
    /// The file could not be written: nothing changed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The credentials in force.
#[derive(Debug)]
pub struct Credentials {
    authentication: AtomicBool,
    tokens: RwLock<HashSet<[u8; 32]>>,
    secret: RwLock<Option<Secret>>,
    /// SHA-256 of the last key that matched, so a client repeating the right key does not
    /// pay the derivation on every request.
    verified: RwLock<Option<[u8; 32]>>,
    saved: Mutex<Saved>,
    file: PathBuf,
}

impl Credentials {
    /// The credentials for `config`. An unreadable file is an error: a gateway's token must
    /// not stop working, nor authentication turn off, silently.
    pub fn load(config: &Config) -> Result<Self, String> {
        let file = config.state_dir.join("credentials.json");
        let saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes)
                .map_err(|e| format!("{}: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let mut tokens = HashSet::new();
        for t in &saved.sideband_tokens {
            tokens.insert(from_hex::<32>(&t.sha256).ok_or_else(|| {
                format!("{}: a token digest is not 64 hex digits", file.display())
            })?);
        }
        let secret = match &saved.rest_secret {
            Some(s) => Some(
                secret_of(s)
                    .ok_or_else(|| format!("{}: the REST secret is damaged", file.display()))?,
            ),
            None => None,
        };
        let configured = config.sideband.authentication;
        let authentication = saved.sideband_authentication.unwrap_or(configured);
        if authentication != configured {
            tracing::warn!(
                "sideband authentication {} by the CLI or REST (kept in {}), although the configuration says {}",
                on_off(authentication),
                file.display(),
                on_off(configured)
            );
        }
        Ok(Self {
            authentication: AtomicBool::new(authentication),
            tokens: RwLock::new(tokens),
            secret: RwLock::new(secret),
            verified: RwLock::new(None),
            saved: Mutex::new(saved),
            file,
        })
    }

    /// Whether sideband requests must carry a valid `ASE-Token`.
    pub fn authentication(&self) -> bool {
        self.authentication.load(Ordering::Relaxed)
    }

    /// Whether `token` is one of the sideband tokens.
    pub fn token_valid(&self, token: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(token).into();
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&d)
    }

    /// How `key` compares with the REST API's secret key. A key not seen to match before
    /// costs a PBKDF2 derivation: call it off the async workers.
    pub fn check_secret(&self, key: &[u8]) -> SecretCheck {
        let Some((salt, want, iterations)) =
            *self.secret.read().unwrap_or_else(PoisonError::into_inner)
        else {
            return SecretCheck::Unset;
        };
        let seen: [u8; 32] = Sha256::digest(key).into();
        if *self.verified.read().unwrap_or_else(PoisonError::into_inner) == Some(seen) {
            return SecretCheck::Good;
        }
        if stretched(&salt, key, iterations) == want {
            *self
                .verified
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(seen);
            SecretCheck::Good
        } else {
            SecretCheck::Wrong
        }
    }

    /// The tokens, as hints, and the authentication switch.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.lock().sideband_tokens.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to a copy, saves it, then puts it in force; on a failed save nothing
    /// changes.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Saved) -> Result<T, CredentialError>,
    ) -> Result<T, CredentialError> {
        let mut saved = self.lock();
        let mut next = saved.clone();
        let out = change(&mut next)?;
        write_atomically(&self.file, &next)?;
        let mut tokens = HashSet::new();
        for t in &next.sideband_tokens {
            if let Some(d) = from_hex::<32>(&t.sha256) {
                tokens.insert(d);
            }
        }
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = tokens;
        *self.secret.write().unwrap_or_else(PoisonError::into_inner) =
            next.rest_secret.as_ref().and_then(secret_of);
        *self
            .verified
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
        if let Some(on) = next.sideband_authentication {
            self.authentication.store(on, Ordering::Relaxed);
        }
        *saved = next;
        Ok(out)
    }

    /// Creates a sideband token (32 lowercase hex characters, as ASE's); returned this once.
    pub fn create_token(&self, now: i64) -> Result<String, CredentialError> {
        let token = hex(&random::<16>()?);
        self.import_token(&token, now)?;
        Ok(token)
    }

    /// Adds a token made elsewhere (ASE's `PUT /v5/ase/sideband/token`), so gateways
    /// configured for ASE keep theirs.
    pub fn import_token(&self, token: &str, now: i64) -> Result<(), CredentialError> {
        if token.len() != 32
            || !token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(CredentialError::BadToken);
        }
        let sha256 = hex(&Sha256::digest(token.as_bytes()));
        self.update(|s| {
            if s.sideband_tokens.iter().any(|t| t.sha256 == sha256) {
                return Err(CredentialError::Exists);
            }
            s.sideband_tokens.push(TokenRecord {
                sha256,
                hint: token.chars().take(4).collect(),
                created: now,
            });
            Ok(())
        })
    }

    /// Deletes a token; whether it was there.
    pub fn delete_token(&self, token: &str) -> Result<bool, CredentialError> {
        let sha256 = hex(&Sha256::digest(token.as_bytes()));
        self.update(|s| {
            let before = s.sideband_tokens.len();
            s.sideband_tokens.retain(|t| t.sha256 != sha256);
            Ok(s.sideband_tokens.len() != before)
        })
    }

    /// Turns sideband authentication on or off, and keeps the choice.
    pub fn set_authentication(&self, on: bool) -> Result<(), CredentialError> {
        self.update(|s| {
            s.sideband_authentication = Some(on);
            Ok(())
        })
    }

    /// Sets the REST API's secret key (ASE's `update_password`).
    pub fn set_secret(&self, key: &str) -> Result<(), CredentialError> {
        if !(8..=256).contains(&key.len()) || key.chars().any(char::is_control) {
            return Err(CredentialError::BadSecret);
        }
        let salt = random::<16>()?;
        let record = SecretRecord {
            salt: hex(&salt),
            sha256: hex(&stretched(&salt, key.as_bytes(), SECRET_ITERATIONS)),
            iterations: SECRET_ITERATIONS,
        };
        self.update(|s| {
            s.rest_secret = Some(record);
            Ok(())
        })
    }

    /// Whether a REST secret key is set.
    pub fn secret_set(&self) -> bool {
        self.secret
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl super::Service {
    /// Answers `credentials`: changes are saved before they take effect.
    pub(super) fn credentials(
        &mut self,
        action: CredentialAction,
    ) -> Result<SidebandCredentials, super::ServiceError> {
        let c = self.board.credentials().clone();
        let bad = |e: CredentialError| match e {
            CredentialError::Io(e) => super::ServiceError::Switches(e.to_string()),
            e => super::ServiceError::BadRequest(e.to_string()),
        };
        let now = super::unix_now();
        let mut out = SidebandCredentials::default();
        match action {
            CredentialAction::Show => {}
            CredentialAction::CreateToken => {
                out.created = Some(c.create_token(now).map_err(bad)?);
                tracing::warn!("sideband token created");
            }
            CredentialAction::ImportToken { token } => {
                c.import_token(&token, now).map_err(bad)?;
                tracing::warn!("sideband token imported");
            }
            CredentialAction::DeleteToken { token } => {
                let deleted = c.delete_token(&token).map_err(bad)?;
                tracing::warn!(deleted, "sideband token deleted");
                out.deleted = Some(deleted);
            }
            CredentialAction::Authentication { on } => {
                c.set_authentication(on).map_err(bad)?;
                tracing::warn!(on, "sideband authentication switched");
            }
            CredentialAction::RestSecret { secret } => {
                c.set_secret(&secret).map_err(bad)?;
                tracing::warn!("REST secret key changed");
            }
        }
        out.authentication = c.authentication();
        out.rest_secret_set = c.secret_set();
        out.tokens = c
            .tokens()
            .into_iter()
            .map(|t| TokenView {
                fingerprint: t.sha256.chars().take(12).collect(),
                hint: t.hint,
                created: t.created,
            })
            .collect();
        Ok(out)
    }
}

fn secret_of(s: &SecretRecord) -> Option<Secret> {
    Some((from_hex(&s.salt)?, from_hex(&s.sha256)?, s.iterations))
}

/// The key derived from `key`: PBKDF2-HMAC-SHA256, or with 0 iterations the first
/// format's salted SHA-256.
fn stretched(salt: &[u8; 16], key: &[u8], iterations: u32) -> [u8; 32] {
    let Some(n) = std::num::NonZeroU32::new(iterations) else {
        return salted(salt, key);
    };
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, n, salt, key, &mut out);
    out
}

fn salted(salt: &[u8; 16], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(key);
    h.finalize().into()
}

/// `N` bytes from the kernel's random source.
fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read as _;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tag: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("pc-cred-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Config {
            state_dir: dir,
            ..Config::default()
        }
    }

    #[test]
    fn tokens_are_kept_as_digests_and_outlive_a_restart() {
        let config = config("tokens");
        let c = Credentials::load(&config).expect("load");
        let t = c.create_token(1).expect("create");
        assert_eq!(t.len(), 32);
        assert!(c.token_valid(t.as_bytes()));
        assert!(!c.token_valid(b"0123456789abcdef0123456789abcdef"));
        let file =
            std::fs::read_to_string(config.state_dir.join("credentials.json")).expect("file");
        assert!(!file.contains(&t), "the token is not stored in clear");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(config.state_dir.join("credentials.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "owner only");
        c.set_authentication(true).expect("on");
        let again = Credentials::load(&config).expect("reload");
        assert!(again.token_valid(t.as_bytes()) && again.authentication());
        assert!(again.delete_token(&t).expect("delete"));
        assert!(!again.token_valid(t.as_bytes()));
        assert!(matches!(
            again.import_token("SHORT", 2),
            Err(CredentialError::BadToken)
        ));
        let _ = std::fs::remove_dir_all(&config.state_dir);
    }

    #[test]
    fn the_rest_secret_is_salted_and_unset_refuses_everyone() {
        let config = config("secret");
        let c = Credentials::load(&config).expect("load");
        assert_eq!(c.check_secret(b"admin"), SecretCheck::Unset);
        assert!(c.set_secret("short").is_err());
        c.set_secret("a long secret").expect("set");
        assert_eq!(c.check_secret(b"a long secret"), SecretCheck::Good);
        assert_eq!(c.check_secret(b"a long secreT"), SecretCheck::Wrong);
        assert_eq!(
            c.check_secret(b"a long secret"),
            SecretCheck::Good,
            "from the cache"
        );
        let again = Credentials::load(&config).expect("reload");
        assert_eq!(again.check_secret(b"a long secret"), SecretCheck::Good);
        c.set_secret("another secret").expect("change");
        assert_eq!(
            c.check_secret(b"a long secret"),
            SecretCheck::Wrong,
            "the cache is dropped on a change"
        );
        let file =
            std::fs::read_to_string(config.state_dir.join("credentials.json")).expect("file");
        assert!(file.contains("\"iterations\": 100000"), "{file}");
        let file =
            std::fs::read_to_string(config.state_dir.join("credentials.json")).expect("file");
        assert!(!file.contains("a long secret"));
        std::fs::write(config.state_dir.join("credentials.json"), "{broken").expect("write");
        assert!(
            Credentials::load(&config).is_err(),
            "a broken file is not ignored"
        );
        let _ = std::fs::remove_dir_all(&config.state_dir);
    }
}
