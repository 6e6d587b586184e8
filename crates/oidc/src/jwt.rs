//! ID tokens: a compact JWS whose signature is checked against the
//! provider's published keys (JWK), then its claims against what the
//! gateway expects (issuer, audience, expiry, nonce).
//!
//! Signatures: RS256/384/512 and PS256/384/512 (RSA), ES256 and ES384
//! (ECDSA), EdDSA (Ed25519), all verified with `ring`. `none` and the
//! HMAC algorithms are refused: a token the provider signed with a shared
//! secret proves nothing a client could not forge.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Slack allowed between the provider's clock and ours, in seconds.
pub const LEEWAY_SECS: i64 = 60;

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    #[error("the ID token is signed with {0:?}, which Gatehouse does not accept (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")]
    Algorithm(String),
    #[error("no published key of the provider fits the ID token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("the ID token's signature is not valid")]
    Signature,
    #[error("the ID token was issued by {got:?}, not by {want:?}")]
    Issuer { got: String, want: String },
    #[error("the ID token is for audience {got}, not for client {want:?}")]
    Audience { got: String, want: String },
    #[error("the ID token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("the ID token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("the ID token was issued in the future ({iat}, now {now}); check the clocks")]
    IssuedInFuture { iat: i64, now: i64 },
    #[error("the ID token's nonce does not match the sign-in it answers")]
    Nonce,
    #[error("the ID token has no {0:?} claim")]
    MissingClaim(&'static str),
}

/// One published key (RFC 7517), as the provider's `jwks_uri` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default, rename = "use")]
    pub usage: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

/// The document at `jwks_uri`.
#[derive(Debug, Clone, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// A compact JWS, split and decoded, not yet verified.
#[derive(Debug)]
pub struct Jws {
    pub alg: String,
    pub kid: Option<String>,
    signing_input: String,
    signature: Vec<u8>,
    pub claims: Map<String, Value>,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))
}

/// Splits and decodes `token` (header.payload.signature).
pub fn parse(token: &str) -> Result<Jws, TokenError> {
    if token.len() > 64 * 1024 {
        return Err(TokenError::Malformed("longer than 64 KiB".into()));
    }
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, payload, sig] = parts[..] else {
        return Err(TokenError::Malformed(format!(
            "{} parts instead of 3 (an encrypted ID token is not supported)",
            parts.len()
        )));
    };
    let header: Map<String, Value> = serde_json::from_slice(&b64(header, "the header")?)
        .map_err(|e| TokenError::Malformed(format!("the header is not a JSON object: {e}")))?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64(payload, "the payload")?)
        .map_err(|e| TokenError::Malformed(format!("the payload is not a JSON object: {e}")))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::Malformed("the header has no alg".into()))?
        .to_string();
    if header.get("crit").is_some() {
        return Err(TokenError::Malformed(
            "the header has critical extensions (crit)".into(),
        ));
    }
    Ok(Jws {
        alg,
        kid: header.get("kid").and_then(Value::as_str).map(String::from),
        signing_input: format!("{header}.{payload}", header = parts[0]),
        signature: b64(sig, "the signature")?,
        claims,
    })
}

/// How a JWS algorithm is checked.
enum Scheme {
    Rsa(&'static signature::RsaParameters),
    Ec(
        &'static signature::EcdsaVerificationAlgorithm,
        &'static str,
        usize,
    ),
    Ed25519,
}

fn scheme(alg: &str) -> Result<Scheme, TokenError> {
    Ok(match alg {
        "RS256" => Scheme::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Scheme::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Scheme::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Scheme::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Scheme::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Scheme::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        "ES256" => Scheme::Ec(&signature::ECDSA_P256_SHA256_FIXED, "P-256", 32),
        "ES384" => Scheme::Ec(&signature::ECDSA_P384_SHA384_FIXED, "P-384", 48),
        "EdDSA" | "Ed25519" => Scheme::Ed25519,
        other => return Err(TokenError::Algorithm(other.to_string())),
    })
}

/// A big-endian integer from base64url, without leading zeros.
fn uint(v: &Option<String>) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(v.as_deref()?).ok()?;
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    Some(bytes[first..].to_vec())
}

/// A coordinate of `len` bytes (left-padded).
fn coordinate(v: &Option<String>, len: usize) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(v.as_deref()?).ok()?;
    if bytes.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - bytes.len()];
    out.extend(bytes);
    Some(out)
}

/// Does `key` verify `sig` over `msg` under `scheme`? None when the key is
/// not of the scheme's kind.
fn check(key: &Jwk, scheme: &Scheme, msg: &[u8], sig: &[u8]) -> Option<bool> {
    match scheme {
        Scheme::Rsa(params) => {
            if key.kty != "RSA" {
                return None;
            }
            let (n, e) = (uint(&key.n)?, uint(&key.e)?);
            Some(
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok(),
            )
        }
        Scheme::Ec(alg, crv, len) => {
            if key.kty != "EC" || key.crv.as_deref() != Some(crv) {
                return None;
            }
            let mut point = vec![4u8];
            point.extend(coordinate(&key.x, *len)?);
            point.extend(coordinate(&key.y, *len)?);
            Some(UnparsedPublicKey::new(*alg, point).verify(msg, sig).is_ok())
        }
        Scheme::Ed25519 => {
            if key.kty != "OKP" || key.crv.as_deref() != Some("Ed25519") {
                return None;
            }
            let x = URL_SAFE_NO_PAD.decode(key.x.as_deref()?).ok()?;
            Some(
                UnparsedPublicKey::new(&signature::ED25519, x)
                    .verify(msg, sig)
                    .is_ok(),
            )
        }
    }
}

/// Checks the signature of `jws` with the keys in `keys` that may have
/// made it (same `kid` when the token names one, a signing key of the
/// algorithm's kind). [`TokenError::UnknownKey`] when none may have: the
/// provider may have rotated its keys, so the caller fetches them again.
pub fn verify_signature(jws: &Jws, keys: &[Jwk]) -> Result<(), TokenError> {
    let scheme = scheme(&jws.alg)?;
    let mut tried = false;
    for key in keys {
        if jws.kid.is_some() && key.kid != jws.kid {
            continue;
        }
        if key.usage.as_deref().is_some_and(|u| u != "sig")
            || key.alg.as_deref().is_some_and(|a| a != jws.alg)
        {
            continue;
        }
        match check(key, &scheme, jws.signing_input.as_bytes(), &jws.signature) {
            Some(true) => return Ok(()),
            Some(false) => tried = true,
            None => {}
        }
    }
    if tried {
        Err(TokenError::Signature)
    } else {
        Err(TokenError::UnknownKey(jws.kid.clone()))
    }
}

/// What the claims of an ID token must say.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The nonce of the authorization request this token answers; None
    /// for grants that carry none (device authorization, refresh).
    pub nonce: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: i64,
}

fn number(claims: &Map<String, Value>, name: &'static str) -> Option<i64> {
    claims.get(name).and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .or_else(|| v.as_u64().map(|u| u.min(i64::MAX as u64) as i64))
    })
}

/// Checks issuer, audience (and `azp`), expiry, not-before, issue time,
/// nonce and that a subject is named (OpenID Connect Core 3.1.3.7).
pub fn check_claims(claims: &Map<String, Value>, want: &Expected<'_>) -> Result<(), TokenError> {
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::MissingClaim("iss"))?;
    if iss != want.issuer {
        return Err(TokenError::Issuer {
            got: iss.to_string(),
            want: want.issuer.to_string(),
        });
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => return Err(TokenError::MissingClaim("aud")),
    };
    let azp = claims.get("azp").and_then(Value::as_str);
    if !audiences.contains(&want.client_id) || azp.is_some_and(|a| a != want.client_id) {
        let got = match azp {
            Some(a) => format!("{audiences:?} (azp {a:?})"),
            None => format!("{audiences:?}"),
        };
        return Err(TokenError::Audience {
            got,
            want: want.client_id.to_string(),
        });
    }
    let now = want.now;
    let exp = number(claims, "exp").ok_or(TokenError::MissingClaim("exp"))?;
    if now > exp + LEEWAY_SECS {
        return Err(TokenError::Expired { exp, now });
    }
    if let Some(nbf) = number(claims, "nbf") {
        if now + LEEWAY_SECS < nbf {
            return Err(TokenError::NotYetValid { nbf, now });
        }
    }
    let iat = number(claims, "iat").ok_or(TokenError::MissingClaim("iat"))?;
    if iat > now + LEEWAY_SECS {
        return Err(TokenError::IssuedInFuture { iat, now });
    }
    if let Some(expected) = want.nonce {
        if claims.get("nonce").and_then(Value::as_str) != Some(expected) {
            return Err(TokenError::Nonce);
        }
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(TokenError::MissingClaim("sub")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn enc(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    /// A token signed by `sign` with header `alg`/`kid` and `claims`.
    fn token(alg: &str, kid: &str, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let header = serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = sign(input.as_bytes());
        format!("{input}.{}", enc(&sig))
    }

    fn es256() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some("ec1".into()),
            usage: Some("sig".into()),
            alg: None,
            n: None,
            e: None,
            crv: Some("P-256".into()),
            x: Some(enc(&public[1..33])),
            y: Some(enc(&public[33..65])),
        };
        (pair, jwk)
    }

    fn claims(now: i64) -> Value {
        serde_json::json!({
            "iss": "https://idp.example", "aud": "gatehouse", "sub": "u1",
            "iat": now, "exp": now + 300, "nonce": "n1",
        })
    }

    fn want(now: i64) -> Expected<'static> {
        Expected {
            issuer: "https://idp.example",
            client_id: "gatehouse",
            nonce: Some("n1"),
            now,
        }
    }

    #[test]
    fn an_es256_token_verifies_with_its_key_and_no_other() {
        let (pair, jwk) = es256();
        let (_, other) = es256();
        let rng = SystemRandom::new();
        let now = 1_700_000_000;
        let t = token("ES256", "ec1", &claims(now), |m| {
            pair.sign(&rng, m).unwrap().as_ref().to_vec()
        });
        let jws = parse(&t).unwrap();
        assert_eq!(jws.kid.as_deref(), Some("ec1"));
        verify_signature(&jws, std::slice::from_ref(&jwk)).unwrap();
        check_claims(&jws.claims, &want(now)).unwrap();
        // Another key under the same kid: a bad signature.
        let mut imposter = other.clone();
        imposter.kid = Some("ec1".into());
        assert_eq!(
            verify_signature(&jws, &[imposter]),
            Err(TokenError::Signature)
        );
        // No key with that kid: unknown (fetch the keys again).
        let mut renamed = jwk.clone();
        renamed.kid = Some("ec2".into());
        assert_eq!(
            verify_signature(&jws, &[renamed]),
            Err(TokenError::UnknownKey(Some("ec1".into())))
        );
        // A changed payload breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut c = claims(now);
        c["sub"] = "admin".into();
        parts[1] = enc(c.to_string().as_bytes());
        let forged = parse(&parts.join(".")).unwrap();
        assert_eq!(
            verify_signature(&forged, &[jwk]),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn an_eddsa_token_verifies() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = Jwk {
            kty: "OKP".into(),
            kid: Some("ed".into()),
            usage: None,
            alg: Some("EdDSA".into()),
            n: None,
            e: None,
            crv: Some("Ed25519".into()),
            x: Some(enc(pair.public_key().as_ref())),
            y: None,
        };
        let t = token("EdDSA", "ed", &claims(1), |m| {
            pair.sign(m).as_ref().to_vec()
        });
        verify_signature(&parse(&t).unwrap(), &[jwk]).unwrap();
    }

    #[test]
    fn none_and_hmac_are_refused() {
        for alg in ["none", "HS256"] {
            let t = token(alg, "k", &claims(1), |_| b"x".to_vec());
            assert_eq!(
                verify_signature(&parse(&t).unwrap(), &[]),
                Err(TokenError::Algorithm(alg.into()))
            );
        }
        assert!(matches!(parse("a.b"), Err(TokenError::Malformed(_))));
        assert!(matches!(parse("!.b.c"), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn claims_are_checked_one_by_one() {
        let now = 1_700_000_000;
        let ok = claims(now);
        let check = |edit: &dyn Fn(&mut Value), w: Expected<'_>| {
            let mut c = ok.clone();
            edit(&mut c);
            check_claims(c.as_object().unwrap(), &w)
        };
        assert_eq!(check(&|_| {}, want(now)), Ok(()));
        assert!(matches!(
            check(&|c| c["iss"] = "https://evil".into(), want(now)),
            Err(TokenError::Issuer { .. })
        ));
        assert!(matches!(
            check(&|c| c["aud"] = "other".into(), want(now)),
            Err(TokenError::Audience { .. })
        ));
        // Several audiences: ours among them, and azp names us.
        assert_eq!(
            check(
                &|c| {
                    c["aud"] = serde_json::json!(["gatehouse", "api"]);
                    c["azp"] = "gatehouse".into();
                },
                want(now)
            ),
            Ok(())
        );
        assert!(matches!(
            check(
                &|c| {
                    c["aud"] = serde_json::json!(["gatehouse", "api"]);
                    c["azp"] = "api".into();
                },
                want(now)
            ),
            Err(TokenError::Audience { .. })
        ));
        // Expired, beyond the leeway only.
        assert_eq!(check(&|_| {}, want(now + 300 + LEEWAY_SECS)), Ok(()));
        assert!(matches!(
            check(&|_| {}, want(now + 301 + LEEWAY_SECS)),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            check(&|c| c["nbf"] = (now + 600).into(), want(now)),
            Err(TokenError::NotYetValid { .. })
        ));
        assert!(matches!(
            check(&|c| c["iat"] = (now + 600).into(), want(now)),
            Err(TokenError::IssuedInFuture { .. })
        ));
        assert_eq!(
            check(&|c| c["nonce"] = "n2".into(), want(now)),
            Err(TokenError::Nonce)
        );
        // No nonce expected (device flow): none checked.
        let mut w = want(now);
        w.nonce = None;
        assert_eq!(check(&|c| c["nonce"] = "n2".into(), w), Ok(()));
        assert_eq!(
            check(
                &|c| {
                    c.as_object_mut().unwrap().remove("exp");
                },
                want(now)
            ),
            Err(TokenError::MissingClaim("exp"))
        );
        assert_eq!(
            check(&|c| c["sub"] = "".into(), want(now)),
            Err(TokenError::MissingClaim("sub"))
        );
    }
}
