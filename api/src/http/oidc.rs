//! JWTs from a regional identity provider (e.g. the region's Keycloak), verified against its
//! JSON Web Key Set with `jsonwebtoken` (ring, no network at request time).
//!
//! The JWKS is a file the operator keeps in sync with the provider (e.g. a timer fetching
//! `…/protocol/openid-connect/certs`); it is re-read when its modification time changes, so
//! key rotation needs no restart. Accepted: asymmetric algorithms only (RS*, PS*, ES256/384,
//! EdDSA) with a `kid` naming a key of the set; never `none` nor HMAC (a public key must not
//! double as a shared secret). Checked: signature, `iss`, `aud`, `exp` (and `nbf` when
//! present), 60 s leeway. Mapped: the role claim to a [`Role`], the COTs claim (an array of
//! COT codes) to the caller's COTs, `preferred_username` (else `sub`) to the actor.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use store::Role;

/// `[api.oidc]` in the configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL, compared exactly with `iss`.
    pub issuer: String,
    /// This API's audience, which `aud` must contain.
    pub audience: String,
    /// The provider's JWKS (JSON), re-read when it changes.
    pub jwks_file: PathBuf,
    /// The claim holding the Sentinella role (`nurse`, `physician`, `device_manager`, `admin`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The claim holding the user's COT codes (an array of strings).
    #[serde(default = "default_cots_claim")]
    pub cots_claim: String,
}

fn default_role_claim() -> String {
    "sentinella_role".into()
}

fn default_cots_claim() -> String {
    "sentinella_cots".into()
}

/// Who a verified JWT names.
#[derive(Debug, Clone)]
pub struct Identity {
    pub username: String,
    pub display_name: Option<String>,
    pub role: Role,
    pub cot_codes: Vec<String>,
    /// The token's `exp`.
    pub expires_at: time::OffsetDateTime,
}

/// A JWT verifier over a reloadable JWKS file.
#[derive(Debug)]
pub struct Oidc {
    config: OidcConfig,
    keys: RwLock<Keys>,
}

#[derive(Debug)]
struct Keys {
    set: JwkSet,
    modified: Option<SystemTime>,
    checked: Instant,
}

const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// How often the JWKS file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(10);

fn read_jwks(path: &PathBuf) -> anyhow::Result<(JwkSet, Option<SystemTime>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the JWKS {}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .with_context(|| format!("parse the JWKS {}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((set, modified))
}

impl Oidc {
    /// Loads the JWKS; an unreadable or invalid one is a configuration error.
    pub fn load(config: OidcConfig) -> anyhow::Result<Self> {
        let (set, modified) = read_jwks(&config.jwks_file)?;
        Ok(Oidc {
            config,
            keys: RwLock::new(Keys {
                set,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// Re-reads the JWKS when its file changed (at most every few seconds). A broken new
    /// file keeps the previous keys and is logged.
    fn refresh(&self) {
        let due = self
            .keys
            .read()
            .map(|k| k.checked.elapsed() >= RECHECK)
            .unwrap_or(false);
        if !due {
            return;
        }
        let Ok(mut keys) = self.keys.write() else {
            return;
        };
        keys.checked = Instant::now();
        let modified = std::fs::metadata(&self.config.jwks_file)
            .and_then(|m| m.modified())
            .ok();
        if modified == keys.modified {
            return;
        }
        match read_jwks(&self.config.jwks_file) {
            Ok((set, modified)) => {
                tracing::info!(keys = set.keys.len(), "identity-provider JWKS reloaded");
                keys.set = set;
                keys.modified = modified;
            }
            Err(e) => {
                tracing::error!(error = %e, "JWKS changed but cannot be read; keeping the old keys")
            }
        }
    }

    /// Verifies a JWT and maps its claims. The error says why, for the log (never the token).
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        self.refresh();
        let header = decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(format!("algorithm {:?} not accepted", header.alg));
        }
        let kid = header.kid.ok_or("token without a key id (kid)")?;
        let key = {
            let keys = self.keys.read().map_err(|_| "key set unavailable")?;
            let jwk = keys
                .set
                .find(&kid)
                .ok_or_else(|| format!("no key {kid:?} in the JWKS"))?;
            if let Some(alg) = jwk.common.key_algorithm
                && format!("{alg:?}") != format!("{:?}", header.alg)
            {
                return Err(format!(
                    "key {kid:?} is for {alg:?}, token says {:?}",
                    header.alg
                ));
            }
            DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key {kid:?}: {e}"))?
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 60;
        let data = decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| format!("rejected: {e}"))?;
        let claims = data.claims;
        // A time claim that is not a number is refused here too, whatever the library does
        // with it (jsonwebtoken before 10.3 skipped such an `nbf`: CVE-2026-25537).
        for name in ["exp", "nbf", "iat"] {
            if claims.get(name).is_some_and(|v| !v.is_number()) {
                return Err(format!("{name} is not a number"));
            }
        }
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let role_name = text(&self.config.role_claim)
            .ok_or_else(|| format!("no {} claim", self.config.role_claim))?;
        let role = Role::parse(&role_name).ok_or_else(|| format!("unknown role {role_name:?}"))?;
        let cot_codes = claims
            .get(&self.config.cots_claim)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let username = text("preferred_username")
            .or_else(|| text("sub"))
            .ok_or("no subject")?;
        // The library checked `exp` as a number; read it again for the revocation's lifetime.
        let expires_at = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .and_then(|e| time::OffsetDateTime::from_unix_timestamp(e).ok())
            .ok_or("exp is not a unix time")?;
        Ok(Identity {
            username,
            display_name: text("name"),
            role,
            cot_codes,
            expires_at,
        })
    }
}
