//! Subscriber tokens: HS256 / RS256 / ES256 verification (PEM or JWKS) into a [`Subscriber`].

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::channel::{ChannelName, ChannelPattern};
use crate::config::JwtConfig;
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
    /// Token expiry, seconds since the Unix epoch.
    pub exp: u64,
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
    /// Builds a verifier from config; `dev_secret` is used for HS256 when none is configured.
    ///
    /// # Errors
    /// [`KeyError`] when a key file cannot be read or parsed.
    pub fn from_config(cfg: &JwtConfig, dev_secret: Option<&str>) -> Result<Self, KeyError> {
        let read = |p: &str| {
            std::fs::read(Path::new(p)).map_err(|e| KeyError(format!("cannot read {p}: {e}")))
        };
        let (algorithm, keys) = match cfg.algorithm.as_str() {
            "HS256" => {
                let secret = if !cfg.secret.is_empty() {
                    cfg.secret.clone().into_bytes()
                } else if !cfg.secret_file.is_empty() {
                    let mut s = read(&cfg.secret_file)?;
                    while s.last().is_some_and(u8::is_ascii_whitespace) {
                        s.pop();
                    }
                    s
                } else if let Some(dev) = dev_secret {
                    dev.as_bytes().to_vec()
                } else {
                    return Err(KeyError("HS256 needs jwt.secret or jwt.secret_file".into()));
                };
                if secret.is_empty() {
                    return Err(KeyError("the HS256 secret is empty".into()));
                }
                (
                    Algorithm::HS256,
                    Keys::Single(DecodingKey::from_secret(&secret)),
                )
            }
            alg @ ("RS256" | "ES256") => {
                let algorithm = if alg == "RS256" {
                    Algorithm::RS256
                } else {
                    Algorithm::ES256
                };
                let keys = if !cfg.public_key_file.is_empty() {
                    let pem = read(&cfg.public_key_file)?;
                    let key = if algorithm == Algorithm::RS256 {
                        DecodingKey::from_rsa_pem(&pem)
                    } else {
                        DecodingKey::from_ec_pem(&pem)
                    }
                    .map_err(|e| KeyError(format!("{}: {e}", cfg.public_key_file)))?;
                    Keys::Single(key)
                } else {
                    let text = read(&cfg.jwks_file)?;
                    let set: JwkSet = serde_json::from_slice(&text)
                        .map_err(|e| KeyError(format!("{}: {e}", cfg.jwks_file)))?;
                    let mut by_kid = HashMap::new();
                    let mut only = None;
                    for jwk in &set.keys {
                        let key = DecodingKey::from_jwk(jwk)
                            .map_err(|e| KeyError(format!("{}: {e}", cfg.jwks_file)))?;
                        if let Some(kid) = &jwk.common.key_id {
                            by_kid.insert(kid.clone(), key.clone());
                        }
                        only = Some(key);
                    }
                    if set.keys.len() != 1 {
                        only = None;
                    }
                    Keys::Jwks(by_kid, only)
                };
                (algorithm, keys)
            }
            other => return Err(KeyError(format!("unsupported algorithm {other}"))),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present in the token, not merely match when present.
        let mut required = vec!["exp", "sub"];
        if cfg.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&cfg.issuer]);
            required.push("iss");
        }
        if cfg.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&cfg.audience]);
            required.push("aud");
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
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            unauth(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
                ErrorKind::InvalidSignature => "invalid token signature",
                ErrorKind::InvalidAudience => "token audience (aud) not accepted",
                ErrorKind::InvalidIssuer => "token issuer (iss) not accepted",
                ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                ErrorKind::MissingRequiredClaim(c) if c == "sub" => "token has no sub claim",
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => "token has no exp claim",
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => "token has no aud claim",
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => "token has no iss claim",
                ErrorKind::MissingRequiredClaim(_) => "token misses a required claim",
                _ => "malformed token",
            })
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(unauth("token has an empty sub claim"));
        }
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
            exp: claims.exp,
        })
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
        let cfg = JwtConfig {
            secret: secret.into(),
            ..JwtConfig::default()
        };
        JwtVerifier::from_config(&cfg, None).unwrap()
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
