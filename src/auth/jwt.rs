//! Subscriber tokens: HS256 / RS256 / ES256 verification (PEM or JWKS) into a [`Subscriber`].

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::channel::{ChannelName, ChannelPattern};
use crate::config::{JwtAlgorithm, JwtKey, JwtSettings};
use crate::error::GatewayError;

/// The claims the gateway reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Channel patterns the user may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Roles; `admin` opens the admin endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// An authenticated subscriber.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// User id.
    pub sub: String,
    /// Patterns from the `channels` claim (invalid ones are dropped).
    pub patterns: Vec<ChannelPattern>,
    /// Roles.
    pub roles: Vec<String>,
    /// When the gateway stops honouring the token, seconds since the Unix epoch: its `exp`, or,
    /// for a token accepted within the leeway after its `exp`, `exp` + leeway (so that a stream
    /// it opens is not ended by `event: expired` at once). Streams end and session cookies
    /// expire then.
    pub exp: u64,
    /// When the token was issued (`iat`, seconds since the Unix epoch), when it says so as a
    /// number; a revocation of the user's tokens refuses those issued before it.
    pub iat: Option<u64>,
    /// The verified token itself, forwarded to the `[authz]` callback so that the app can
    /// check the user its own way.
    pub(crate) token: BearerToken,
}

/// A subscriber's raw token: `Debug` never shows it, and it is never serialized.
#[derive(Clone)]
pub(crate) struct BearerToken(std::sync::Arc<str>);

impl BearerToken {
    /// The token, for the `Authorization` header of the callback.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Subscriber {
    /// Whether the user holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether a `channels` claim pattern grants `name`.
    pub fn claim_allows(&self, name: &ChannelName) -> bool {
        self.patterns
            .iter()
            .any(|p| p.matches(name, Some(&self.sub)))
    }
}

enum Keys {
    Single(DecodingKey),
    Jwks(HashMap<String, DecodingKey>, Option<DecodingKey>),
}

/// Verifies tokens with the configured algorithm and key only.
pub struct JwtVerifier {
    algorithm: Algorithm,
    keys: Keys,
    validation: Validation,
}

/// Why the verifier could not be built.
#[derive(Debug, thiserror::Error)]
#[error("jwt: {0}")]
pub struct KeyError(String);

impl JwtVerifier {
    /// Builds a verifier from the validated settings, reading key files now (so building it
    /// again picks up new files).
    ///
    /// # Errors
    /// [`KeyError`] when a key file cannot be read or parsed.
    pub fn from_config(cfg: &JwtSettings) -> Result<Self, KeyError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| KeyError(format!("cannot read {}: {e}", p.display())))
        };
        let shown = |p: &Path, e: &dyn std::fmt::Display| KeyError(format!("{}: {e}", p.display()));
        let algorithm = match cfg.algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        };
        let keys = match (&cfg.key, algorithm) {
            (JwtKey::Secret(secret), Algorithm::HS256) => {
                Keys::Single(DecodingKey::from_secret(secret.expose().as_bytes()))
            }
            (JwtKey::SecretFile(path), Algorithm::HS256) => {
                let mut s = read(path)?;
                while s.last().is_some_and(u8::is_ascii_whitespace) {
                    s.pop();
                }
                if s.is_empty() {
                    return Err(KeyError(format!(
                        "{}: the HS256 secret is empty",
                        path.display()
                    )));
                }
                Keys::Single(DecodingKey::from_secret(&s))
            }
            (JwtKey::PublicKeyFile(path), Algorithm::RS256 | Algorithm::ES256) => {
                let pem = read(path)?;
                let key = if algorithm == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                }
                .map_err(|e| shown(path, &e))?;
                Keys::Single(key)
            }
            (JwtKey::JwksFile(path), Algorithm::RS256 | Algorithm::ES256) => {
                let text = read(path)?;
                let set: JwkSet = serde_json::from_slice(&text).map_err(|e| shown(path, &e))?;
                let mut by_kid = HashMap::new();
                let mut only = None;
                for jwk in &set.keys {
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| shown(path, &e))?;
                    if let Some(kid) = &jwk.common.key_id {
                        by_kid.insert(kid.clone(), key.clone());
                    }
                    only = Some(key);
                }
                if set.keys.len() != 1 {
                    only = None;
                }
                Keys::Jwks(by_kid, only)
            }
            (_, alg) => {
                return Err(KeyError(format!("this key cannot verify {alg:?} tokens")));
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        // `exp` and `sub` are checked in `claims_of`, which can say what is wrong with them.
        validation.validate_exp = false;
        // A configured issuer or audience must be present in the token, not merely match when present.
        let mut required = Vec::new();
        match &cfg.issuer {
            None => validation.iss = None,
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
        }
        match &cfg.audience {
            None => validation.validate_aud = false,
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            algorithm,
            keys,
            validation,
        })
    }

    /// Verifies a token.
    ///
    /// # Errors
    /// [`GatewayError::Unauthenticated`] saying what is wrong (never echoing the token).
    pub fn verify(&self, token: &str) -> Result<Subscriber, GatewayError> {
        let unauth = |m: &str| GatewayError::Unauthenticated(m.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| match raw_alg(token) {
            Some(alg) if alg != format!("{:?}", self.algorithm) => {
                unauth(&format!("token algorithm {alg:?} is not accepted"))
            }
            _ => unauth("malformed token"),
        })?;
        if header.alg != self.algorithm {
            return Err(unauth(&format!(
                "token algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = match &self.keys {
            Keys::Single(k) => k,
            Keys::Jwks(by_kid, only) => match header.kid.as_ref() {
                Some(kid) => by_kid
                    .get(kid)
                    .ok_or_else(|| unauth("token key id (kid) is not in the JWKS"))?,
                None => only
                    .as_ref()
                    .ok_or_else(|| unauth("token has no key id (kid)"))?,
            },
        };
        // The signature is verified before any claim is looked at.
        let data =
            jsonwebtoken::decode::<RawClaims>(token, key, &self.validation).map_err(|e| {
                unauth(match e.kind() {
                    ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
                    ErrorKind::InvalidClaimFormat(c) if c == "nbf" => {
                        "token nbf claim is not a number"
                    }
                    ErrorKind::InvalidSignature => "invalid token signature",
                    ErrorKind::InvalidAudience => "token audience (aud) not accepted",
                    ErrorKind::InvalidIssuer => "token issuer (iss) not accepted",
                    ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => "token has no aud claim",
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => "token has no iss claim",
                    ErrorKind::MissingRequiredClaim(_) => "token misses a required claim",
                    ErrorKind::Json(_) => self.unreadable_claims(token, key),
                    _ => "malformed token",
                })
            })?;
        let iat = data.claims.iat.as_ref().and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| s as u64)
            }),
            _ => None,
        });
        let now = crate::event::now_ms() / 1000;
        let claims = claims_of(data.claims, now, self.validation.leeway).map_err(unauth)?;
        let patterns = claims
            .channels
            .iter()
            .filter_map(|p| match ChannelPattern::parse(p) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!(error = %e, "ignoring invalid channels claim pattern");
                    None
                }
            })
            .collect();
        Ok(Subscriber {
            sub: claims.sub,
            patterns,
            roles: claims.roles,
            exp: if claims.exp > now {
                claims.exp
            } else {
                claims.exp.saturating_add(self.validation.leeway)
            },
            iat,
            token: BearerToken(token.into()),
        })
    }
}

/// The claims the gateway reads, as the token has them, so that a missing claim or one of the
/// wrong type is reported as such rather than as a malformed token. `null` counts as missing.
#[derive(Deserialize)]
#[serde(from = "serde_json::Map<String, serde_json::Value>")]
struct RawClaims {
    sub: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    channels: Option<serde_json::Value>,
    roles: Option<serde_json::Value>,
    /// Checked by the library; read here only to explain an unreadable token.
    nbf: Option<serde_json::Value>,
    /// Issued-at, for token revocation.
    iat: Option<serde_json::Value>,
}

/// Through a map, so that claims that are not a JSON object (an array would fill the fields
/// by position) are refused.
impl From<serde_json::Map<String, serde_json::Value>> for RawClaims {
    fn from(mut map: serde_json::Map<String, serde_json::Value>) -> Self {
        let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
        Self {
            sub: take("sub"),
            exp: take("exp"),
            channels: take("channels"),
            roles: take("roles"),
            nbf: take("nbf"),
            iat: take("iat"),
        }
    }
}

/// Checks the claims of a verified token at `now` (seconds since the Unix epoch).
///
/// `exp` is enforced with the configured leeway (clock skew between the issuer and the
/// gateway), by every endpoint alike: a token is expired from `exp + leeway` on.
///
/// # Errors
/// A message naming the claim that is missing, of the wrong type or expired.
fn claims_of(raw: RawClaims, now: u64, leeway: u64) -> Result<Claims, &'static str> {
    use serde_json::Value;
    let exp = match raw.exp {
        None => return Err("token has no exp claim"),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => secs,
            // A NumericDate may have a fraction; the whole seconds are what count here.
            (None, Some(secs)) if secs.is_finite() && secs >= 0.0 => secs as u64,
            _ => return Err("token exp claim must be a non-negative number of seconds"),
        },
        Some(_) => return Err("token exp claim must be a number (seconds since the epoch)"),
    };
    let sub = match raw.sub {
        None => return Err("token has no sub claim"),
        Some(Value::String(s)) if s.is_empty() => return Err("token has an empty sub claim"),
        Some(Value::String(s)) => s,
        Some(_) => return Err("token sub claim must be a string"),
    };
    if exp.saturating_add(leeway) <= now {
        return Err("token expired");
    }
    let strings = |v: Option<Value>, err: &'static str| match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(err),
            })
            .collect(),
        Some(_) => Err(err),
    };
    Ok(Claims {
        sub,
        exp,
        channels: strings(
            raw.channels,
            "token channels claim must be an array of strings",
        )?,
        roles: strings(raw.roles, "token roles claim must be an array of strings")?,
    })
}

impl JwtVerifier {
    /// Why a token's claims could not be read. The library reads `exp`, `nbf` and `sub` a second
    /// time, strictly, and refuses the whole token when one of them is an array or an object;
    /// this finds which (after checking the signature itself, so nothing is said about the
    /// claims of a token that is not ours).
    fn unreadable_claims(&self, token: &str, key: &DecodingKey) -> &'static str {
        let Some((message, signature)) = token.rsplit_once('.') else {
            return "malformed token";
        };
        if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, self.algorithm)
            .unwrap_or(false)
        {
            return "invalid token signature";
        }
        let raw = message
            .split_once('.')
            .and_then(|(_, payload)| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .ok()
            })
            .and_then(|json| serde_json::from_slice::<RawClaims>(&json).ok());
        let Some(raw) = raw else {
            return "malformed token: its claims are not a JSON object";
        };
        if raw.nbf.as_ref().is_some_and(|v| !v.is_number()) {
            return "token nbf claim is not a number";
        }
        claims_of(raw, crate::event::now_ms() / 1000, self.validation.leeway)
            .err()
            .unwrap_or("malformed token")
    }
}

/// The `alg` of a token whose header the library refuses (such as `none`).
fn raw_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_owned)
}

/// Mints an HS256 token (dev tooling and tests).
///
/// # Errors
/// When signing fails.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> JwtVerifier {
        JwtVerifier::from_config(&JwtSettings::hs256(secret)).unwrap()
    }

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp: (crate::event::now_ms() / 1000).saturating_add_signed(exp_in),
            channels: vec!["logs:**".into(), "bad pattern".into()],
            roles: vec![],
        }
    }

    #[test]
    fn accepts_valid_and_drops_bad_patterns() {
        let token = mint_hs256(b"s3cret", &claims(60)).unwrap();
        let sub = verifier("s3cret").verify(&token).unwrap();
        assert_eq!(sub.sub, "alice");
        assert_eq!(sub.patterns.len(), 1);
    }

    fn raw(v: serde_json::Value) -> RawClaims {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn names_the_claim_that_is_missing_or_of_the_wrong_type() {
        use serde_json::json;
        let now = 1_000;
        let cases = [
            (json!({"sub": "a"}), "no exp claim"),
            (json!({"sub": "a", "exp": null}), "no exp claim"),
            (json!({"exp": 2000}), "no sub claim"),
            (json!({"sub": "", "exp": 2000}), "empty sub claim"),
            (
                json!({"sub": ["a"], "exp": 2000}),
                "sub claim must be a string",
            ),
            (
                json!({"sub": "a", "exp": "2000"}),
                "exp claim must be a number",
            ),
            (json!({"sub": "a", "exp": -5}), "non-negative"),
            (json!({"sub": "a", "exp": 1000}), "token expired"),
            (json!({"sub": "a", "exp": 999.9}), "token expired"),
            (
                json!({"sub": "a", "exp": 2000, "channels": "x:*"}),
                "channels claim",
            ),
            (
                json!({"sub": "a", "exp": 2000, "channels": [1]}),
                "channels claim",
            ),
            (
                json!({"sub": "a", "exp": 2000, "roles": {"admin": true}}),
                "roles claim",
            ),
        ];
        for (claims, want) in cases {
            let err = claims_of(raw(claims.clone()), now, 0).unwrap_err();
            assert!(err.contains(want), "{claims}: {err}");
        }
        let ok = claims_of(
            raw(json!({"sub": "a", "exp": 1001.5, "roles": ["x"]})),
            now,
            0,
        )
        .unwrap();
        assert_eq!((ok.exp, ok.roles), (1001, vec!["x".to_owned()]));
    }

    #[test]
    fn claims_of_a_type_the_library_cannot_skip_are_named() {
        use serde_json::json;
        let v = verifier("s3cret");
        let exp = crate::event::now_ms() / 1000 + 60;
        let sign = |c: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &c,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        let cases = [
            (
                json!({"sub": ["a"], "exp": exp}),
                "sub claim must be a string",
            ),
            (
                json!({"sub": {"a": 1}, "exp": exp}),
                "sub claim must be a string",
            ),
            (
                json!({"sub": "a", "exp": [exp]}),
                "exp claim must be a number",
            ),
            (
                json!({"sub": "a", "exp": exp, "nbf": {}}),
                "nbf claim is not a number",
            ),
            (json!([1, 2]), "not a JSON object"),
        ];
        for (claims, want) in cases {
            let err = v.verify(&sign(claims.clone())).unwrap_err().to_string();
            assert!(err.contains(want), "{claims}: {err}");
        }
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": ["a"], "exp": exp}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(
            v.verify(&forged).unwrap_err().to_string(),
            "invalid token signature"
        );
    }

    #[test]
    fn expired_within_the_leeway_is_honoured_until_the_leeway_ends() {
        let v = verifier("s3cret");
        let now = crate::event::now_ms() / 1000;
        let live = v
            .verify(&mint_hs256(b"s3cret", &claims(60)).unwrap())
            .unwrap();
        assert!(
            live.exp.abs_diff(now + 60) <= 1,
            "a live token ends at its exp"
        );
        let within = v
            .verify(&mint_hs256(b"s3cret", &claims(-5)).unwrap())
            .unwrap();
        assert!(
            within.exp.abs_diff(now - 5 + 30) <= 1,
            "ends when the 30 s leeway does: {} (now {now})",
            within.exp
        );
        let past = mint_hs256(b"s3cret", &claims(-31)).unwrap();
        assert_eq!(v.verify(&past).unwrap_err().to_string(), "token expired");
    }

    #[test]
    fn rejects_expired_bad_signature_and_none() {
        let v = verifier("s3cret");
        let expired = mint_hs256(b"s3cret", &claims(-120)).unwrap();
        assert!(v
            .verify(&expired)
            .unwrap_err()
            .to_string()
            .contains("expired"));
        let forged = mint_hs256(b"other", &claims(60)).unwrap();
        assert!(v
            .verify(&forged)
            .unwrap_err()
            .to_string()
            .contains("signature"));
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"alg":"none","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"sub":"a","exp":9999999999}"#)
        );
        assert!(v.verify(&none).unwrap_err().to_string().contains("none"));
        assert!(v.verify("garbage").is_err());
    }
}
