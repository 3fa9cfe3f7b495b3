//! Token authentication: verifying and minting HS256 JWTs, and finding the signing secret.
//!
//! Users are owned by another application, which mints tokens with the shared secret; the
//! server only checks them (PROTOCOL.md section 2). The rules are strict where safety needs
//! it (one algorithm, required `sub` and `exp`) and lenient where a bad value is harmless
//! (an unusable `name` falls back to the user id instead of rejecting the token).

use std::fs;
use std::io::{self, ErrorKind as IoErrorKind};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::SessionUser;
use crate::protocol::room::is_valid_user_id;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// Longest accepted display name, in Unicode scalar values after trimming.
const MAX_NAME_CHARS: usize = 100;
/// Name of the generated JWT secret's file inside the data directory.
const SECRET_FILE: &str = "jwt-secret";
/// Name of the generated admin secret's file inside the data directory.
pub const ADMIN_SECRET_FILE: &str = "admin-secret";

/// Verifies and mints tokens with one HS256 secret.
pub struct Auth {
    /// Key that signs minted tokens.
    encoding: EncodingKey,
    /// Key that checks signatures.
    decoding: DecodingKey,
    /// The claim and algorithm rules every token must meet.
    validation: Validation,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token was given.
    Missing,
    /// A token was given but is not acceptable; the reason is for logs and error messages.
    Invalid(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str("missing token"),
            AuthError::Invalid(reason) => write!(f, "invalid token: {reason}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Claims written by `mint`.
#[derive(Serialize)]
struct MintClaims<'a> {
    /// The user id.
    sub: &'a str,
    /// Expiry, seconds since the epoch.
    exp: u64,
    /// Issue time, seconds since the epoch; informational only.
    iat: u64,
    /// Display name, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        // No audience is configured, so an `aud` claim is not ours to judge.
        validation.validate_aud = false;
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// HS256 only (any other alg incl. none/HS384/RS256 refused), `sub` and `exp` required,
    /// `nbf` honoured when present, 30 s leeway on both, `iat` not checked; `sub` must pass
    /// is_valid_user_id; `name` claim: trimmed, used when it is a string of 1..=100 Unicode
    /// scalar values after trimming, otherwise the id (token still valid even if name is a
    /// number/object/too long).
    pub fn verify(&self, token: &str) -> Result<SessionUser, AuthError> {
        self.verify_issued(token).map(|(user, _)| user)
    }

    /// [`Auth::verify`], with the token's `iat` (seconds, rounded down; `None` when the
    /// claim is absent or not a non-negative number), which an erasure judges tokens by.
    pub fn verify_issued(&self, token: &str) -> Result<(SessionUser, Option<u64>), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // A plain map, so that an odd `name` cannot make decoding fail.
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation)
                .map_err(|e| AuthError::Invalid(reason(e.kind())))?;
        let claims = data.claims;
        let id = match claims.get("sub") {
            Some(Value::String(sub)) if is_valid_user_id(sub) => sub.clone(),
            _ => {
                return Err(AuthError::Invalid(
                    "`sub` is not a valid user id".to_owned(),
                ))
            }
        };
        let name = match claims.get("name") {
            Some(Value::String(name)) => {
                let trimmed = name.trim();
                let len = trimmed.chars().count();
                (1..=MAX_NAME_CHARS)
                    .contains(&len)
                    .then(|| trimmed.to_owned())
            }
            _ => None,
        };
        let issued_at = claims.get("iat").and_then(|iat| {
            iat.as_u64().or_else(|| {
                iat.as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| s as u64)
            })
        });
        let user = SessionUser {
            name: name.unwrap_or_else(|| id.clone()),
            id,
        };
        Ok((user, issued_at))
    }

    /// Mints an HS256 token with sub, exp = now + ttl, iat, and name when given.
    pub fn mint(&self, user_id: &str, name: Option<&str>, ttl: Duration) -> String {
        let now = unix_now();
        let claims = MintClaims {
            sub: user_id,
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
            name,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an HMAC key cannot fail")
    }
}

/// Whether a token issued at `issued_at` (its `iat`, seconds) comes from before an erasure
/// at `erased_at_ms`, and so must be refused. `iat` has whole seconds and the erasure
/// milliseconds: a token counts as issued after only from the erasure's second rounded
/// up, so no token minted before the erasure passes (one minted later in the same second
/// is refused too; its holder needs one from the next second on). A token without `iat`
/// cannot show it is newer, so it is refused.
pub fn predates_erasure(issued_at: Option<u64>, erased_at_ms: i64) -> bool {
    match issued_at {
        Some(iat) => i128::from(iat) * 1000 < i128::from(erased_at_ms),
        None => true,
    }
}

/// A short reason for logs and the 401 message, without echoing the token.
fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "expired".to_owned(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "bad signature".to_owned(),
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            "algorithm not allowed (HS256 only)".to_owned()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("missing `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("`{claim}` claim has the wrong type"),
        _ => "malformed".to_owned(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The admin API's bearer secret. Never a user token: it is checked only at `/admin/`, and
/// `Auth::verify` refuses it like any string that is not a signed JWT.
pub struct AdminSecret(Vec<u8>);

impl AdminSecret {
    pub fn new(secret: Vec<u8>) -> AdminSecret {
        AdminSecret(secret)
    }

    /// Whether `given` is the secret, compared in constant time so that response timing
    /// does not reveal how much of a guess was right.
    pub fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(given.as_bytes()).into()
    }
}

/// The token of an `Authorization` header value: scheme "Bearer" matched
/// case-insensitively, then one or more spaces, then the token. None otherwise.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, rest) = header_value.split_at_checked("Bearer".len())?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (token.len() < rest.len() && !token.is_empty()).then_some(token)
}

/// The secret to sign with: the configured one if any, else the file
/// `<data_dir>/jwt-secret` (created on first use with 32 random bytes hex-encoded, mode 0600,
/// the directory created if missing), reused afterwards.
pub fn resolve_secret(configured: Option<&str>, data_dir: &Path) -> io::Result<Vec<u8>> {
    resolve_secret_file(configured, data_dir, SECRET_FILE)
}

/// The admin API's secret, found the same way as the JWT secret but in its own file,
/// `<data_dir>/admin-secret`: the two must differ, or a user token's signing key would
/// open the admin API.
pub fn resolve_admin_secret(configured: Option<&str>, data_dir: &Path) -> io::Result<Vec<u8>> {
    resolve_secret_file(configured, data_dir, ADMIN_SECRET_FILE)
}

/// The configured secret, else the one kept in `<data_dir>/<file>`, generated on first use.
fn resolve_secret_file(
    configured: Option<&str>,
    data_dir: &Path,
    file: &str,
) -> io::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    fs::create_dir_all(data_dir)?;
    let path = data_dir.join(file);
    match fs::read_to_string(&path) {
        Ok(text) => return read_secret(&path, &text),
        Err(e) if e.kind() == IoErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }

    // Written whole to a private temporary file and then linked into place, so a server
    // and a `token` command starting together never see a half-written secret, and the
    // loser of a race adopts the winner's secret instead of overwriting it.
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tmp = data_dir.join(format!("{file}.{}.tmp", std::process::id()));
    let result = write_private(&tmp, secret.as_bytes()).and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            // Make the new directory entry durable, or a crash could lose the secret and
            // invalidate every token minted with it.
            fs::File::open(data_dir)?.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new secret");
            Ok(secret.into_bytes())
        }
        Err(e) if e.kind() == IoErrorKind::AlreadyExists => {
            read_secret(&path, &fs::read_to_string(&path)?)
        }
        Err(e) => Err(e),
    }
}

/// The stored secret, ignoring surrounding whitespace an editor may have added.
fn read_secret(path: &Path, text: &str) -> io::Result<Vec<u8>> {
    warn_if_exposed(path);
    let secret = text.trim();
    if secret.is_empty() {
        return Err(io::Error::new(
            IoErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Anyone who can read the secret can impersonate every user, so say so loudly.
#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "secret file is readable by other users; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn auth() -> Auth {
        Auth::new(SECRET)
    }

    fn sign(claims: Value) -> String {
        sign_with(Algorithm::HS256, SECRET, claims)
    }

    fn sign_with(alg: Algorithm, secret: &[u8], claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now() -> i64 {
        unix_now() as i64
    }

    fn user(id: &str, name: &str) -> SessionUser {
        SessionUser {
            id: id.to_owned(),
            name: name.to_owned(),
        }
    }

    fn invalid(result: Result<SessionUser, AuthError>) -> String {
        match result {
            Err(AuthError::Invalid(reason)) => reason,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn the_admin_secret_matches_only_itself() {
        let admin = AdminSecret::new(b"admin-secret-1".to_vec());
        assert!(admin.matches("admin-secret-1"));
        assert!(!admin.matches("admin-secret-2"));
        assert!(!admin.matches("admin-secret-1 "));
        assert!(!admin.matches(""));
        // Nor is it a user token.
        assert!(auth().verify("admin-secret-1").is_err());
    }

    #[test]
    fn good_token_and_mint_round_trip() {
        let t = sign(json!({"sub": "alice", "exp": now() + 60, "name": "Alice"}));
        assert_eq!(auth().verify(&t), Ok(user("alice", "Alice")));
        let t = auth().mint("bob", Some("Bob"), Duration::from_secs(60));
        assert_eq!(auth().verify(&t), Ok(user("bob", "Bob")));
        let t = auth().mint("carol", None, Duration::from_secs(60));
        assert_eq!(auth().verify(&t), Ok(user("carol", "carol")));
        assert_eq!(auth().verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn expiry_has_leeway() {
        let t = sign(json!({"sub": "a", "exp": now() - 10}));
        assert!(auth().verify(&t).is_ok());
        let t = sign(json!({"sub": "a", "exp": now() - 60}));
        assert_eq!(invalid(auth().verify(&t)), "expired");
        assert_eq!(
            auth().verify(&t).unwrap_err().to_string(),
            "invalid token: expired"
        );
        let t = sign(json!({"sub": "a"}));
        assert!(invalid(auth().verify(&t)).contains("exp"));
    }

    #[test]
    fn nbf_is_honoured() {
        let t = sign(json!({"sub": "a", "exp": now() + 600, "nbf": now() + 120}));
        assert!(invalid(auth().verify(&t)).contains("not valid yet"));
        let t = sign(json!({"sub": "a", "exp": now() + 600, "nbf": now() + 10}));
        assert!(auth().verify(&t).is_ok());
        // `iat` in the future is not checked.
        let t = sign(json!({"sub": "a", "exp": now() + 600, "iat": now() + 9999}));
        assert!(auth().verify(&t).is_ok());
    }

    #[test]
    fn only_hs256_with_our_secret() {
        let claims = json!({"sub": "a", "exp": now() + 60});
        let t = sign_with(Algorithm::HS384, SECRET, claims.clone());
        assert!(auth().verify(&t).is_err());
        let t = sign_with(Algorithm::HS256, b"other", claims.clone());
        assert_eq!(invalid(auth().verify(&t)), "bad signature");

        // alg "none" with an empty signature, built by hand as no library will sign it.
        use base64_url as b64;
        let probe = format!("{}.e30.", b64::encode(br#"{"alg":"HS384"}"#));
        assert_eq!(
            jsonwebtoken::decode_header(probe).unwrap().alg,
            Algorithm::HS384
        );
        let header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64::encode(claims.to_string().as_bytes());
        assert!(auth().verify(&format!("{header}.{body}.")).is_err());
        // The same with a copied valid signature.
        let good = sign(claims);
        let sig = good.rsplit('.').next().unwrap();
        assert!(auth().verify(&format!("{header}.{body}.{sig}")).is_err());
        assert!(auth().verify("not.a.token").is_err());
    }

    /// Unpadded URL-safe base64, enough to forge test tokens.
    mod base64_url {
        pub fn encode(bytes: &[u8]) -> String {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        }
    }

    #[test]
    fn sub_is_required_and_checked() {
        let t = sign(json!({"exp": now() + 60}));
        assert!(invalid(auth().verify(&t)).contains("sub"));
        let t = sign(json!({"sub": 42, "exp": now() + 60}));
        assert!(auth().verify(&t).is_err());
        let t = sign(json!({"sub": "a b", "exp": now() + 60}));
        assert!(invalid(auth().verify(&t)).contains("sub"));
        let t = sign(json!({"sub": "x".repeat(65), "exp": now() + 60}));
        assert!(auth().verify(&t).is_err());
        let t = sign(json!({"sub": "x".repeat(64), "exp": now() + 60}));
        assert!(auth().verify(&t).is_ok());
    }

    #[test]
    fn name_rules() {
        let name_of = |name: Value| {
            let t = sign(json!({"sub": "id", "exp": now() + 60, "name": name}));
            auth().verify(&t).unwrap().name
        };
        assert_eq!(name_of(json!("  Ann  ")), "Ann");
        assert_eq!(name_of(json!("   ")), "id");
        assert_eq!(name_of(json!("")), "id");
        assert_eq!(name_of(json!("a".repeat(101))), "id");
        assert_eq!(name_of(json!(7)), "id");
        assert_eq!(name_of(json!({"first": "Ann"})), "id");
        assert_eq!(name_of(Value::Null), "id");
        let wide = "é".repeat(100);
        assert_eq!(name_of(json!(wide)), wide);
        let emoji = "😀".repeat(100);
        assert_eq!(name_of(json!(format!(" {emoji} "))), emoji);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer x"), Some("x"));
        assert_eq!(bearer_token("BEARER   x"), Some("x"));
        assert_eq!(bearer_token("Basic x"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerx"), None);
        assert_eq!(bearer_token(""), None);
        assert_eq!(bearer_token("Beäre x"), None);
    }

    #[test]
    fn secret_is_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/db");
        let first = resolve_secret(None, &data).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        let second = resolve_secret(None, &data).unwrap();
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the secret file is left behind.
        assert_eq!(fs::read_dir(&data).unwrap().count(), 1);

        let configured = resolve_secret(Some("configured"), &data).unwrap();
        assert_eq!(configured, b"configured");
        // A configured secret needs no data directory at all.
        let nowhere = dir.path().join("never-created");
        assert_eq!(resolve_secret(Some("s"), &nowhere).unwrap(), b"s");
        assert!(!nowhere.exists());
    }

    #[test]
    fn iat_is_read_in_whole_seconds_and_judged_against_an_erasure() {
        let exp = now() + 600;
        let issued = |claims: Value| auth().verify_issued(&sign(claims)).unwrap().1;
        assert_eq!(
            issued(json!({ "sub": "a", "exp": exp, "iat": 1_000 })),
            Some(1_000)
        );
        assert_eq!(
            issued(json!({ "sub": "a", "exp": exp, "iat": 1_000.9 })),
            Some(1_000)
        );
        assert_eq!(
            issued(json!({ "sub": "a", "exp": exp, "iat": "1000" })),
            None
        );
        assert_eq!(issued(json!({ "sub": "a", "exp": exp, "iat": -5 })), None);
        assert_eq!(issued(json!({ "sub": "a", "exp": exp })), None);
        // Erased at 1000.250 s: tokens of second 1000 (minted before or just after) are
        // refused, second 1001 passes; no iat never does.
        assert!(predates_erasure(Some(999), 1_000_250));
        assert!(predates_erasure(Some(1_000), 1_000_250));
        assert!(!predates_erasure(Some(1_001), 1_000_250));
        assert!(!predates_erasure(Some(1_000), 1_000_000));
        assert!(predates_erasure(None, 0));
        assert!(!predates_erasure(Some(u64::MAX), i64::MAX));
    }
}
