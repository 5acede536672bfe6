//! JSON Web Tokens as RequestAuthentication checks them, on ring (the
//! crypto the rest of meshgate uses): RS256/384/512, PS256/384/512,
//! ES256/384 and EdDSA against the keys of a JWKS. `alg: none` and HMAC
//! algorithms are refused outright, so a token can never choose to be
//! checked with a public key used as a shared secret.

use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// Clock skew allowed on `exp` and `nbf` (Envoy's default).
pub const SKEW_SECS: i64 = 60;

/// Why a token was refused, in Envoy's words (its 401 bodies say the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed(&'static str),
    /// `none`, HMAC, or an algorithm meshgate does not verify.
    Algorithm(String),
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// No key in the JWKS for the token's `kid` and `alg`.
    NoKey,
    BadSignature,
    /// The JWKS has not been fetched (yet, or ever).
    NoJwks,
}

impl JwtError {
    /// The 401's body.
    pub fn body(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "Jwt is not in the form of Header.Payload.Signature\n",
            JwtError::Algorithm(_) => "Jwt algorithm is not allowed\n",
            JwtError::Expired => "Jwt is expired\n",
            JwtError::NotYetValid => "Jwt not yet valid\n",
            JwtError::Issuer => "Jwt issuer is not configured\n",
            JwtError::Audience => "Audiences in Jwt are not allowed\n",
            JwtError::NoKey => "Jwks doesn't have key to match kid or alg from Jwt\n",
            JwtError::BadSignature => "Jwt verification fails\n",
            JwtError::NoJwks => "Jwks remote fetch is failed\n",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "Jwt is not well formed: {why}"),
            JwtError::Algorithm(alg) => write!(f, "Jwt algorithm {alg:?} is not allowed"),
            JwtError::Expired => write!(f, "Jwt is expired"),
            JwtError::NotYetValid => write!(f, "Jwt not yet valid"),
            JwtError::Issuer => write!(f, "Jwt issuer is not configured"),
            JwtError::Audience => write!(f, "Audiences in Jwt are not allowed"),
            JwtError::NoKey => write!(f, "Jwks doesn't have key to match kid or alg from Jwt"),
            JwtError::BadSignature => write!(f, "Jwt verification fails"),
            JwtError::NoJwks => write!(f, "Jwks remote fetch is failed"),
        }
    }
}

/// One public key of a JWKS.
#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point (0x04 ‖ x ‖ y) on P-256 or P-384.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

/// A JSON Web Key Set: the keys meshgate can use (symmetric and unknown
/// key types are left out).
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl Jwks {
    pub fn parse(text: &str) -> Result<Jwks, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let list = v["keys"].as_array().ok_or("the JWKS has no \"keys\" array")?;
        let keys: Vec<Key> = list.iter().filter_map(key).collect();
        if keys.is_empty() {
            return Err("the JWKS holds no usable public key (RSA, EC P-256/P-384 or Ed25519)".into());
        }
        Ok(Jwks { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn key(v: &Value) -> Option<Key> {
    let b = |name: &str| v[name].as_str().and_then(b64);
    let material = match (v["kty"].as_str()?, v["crv"].as_str()) {
        ("RSA", _) => Material::Rsa { n: strip_zeros(b("n")?), e: strip_zeros(b("e")?) },
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (x, y) = (b("x")?, b("y")?);
            let size = if crv == "P-256" { 32 } else { 48 };
            if x.len() != size || y.len() != size {
                return None;
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::Ec { p384: crv == "P-384", point }
        }
        ("OKP", Some("Ed25519")) => Material::Ed25519(b("x")?),
        _ => return None,
    };
    // A key meant for encryption only is not for checking signatures.
    if v["use"].as_str().is_some_and(|u| u != "sig") {
        return None;
    }
    Some(Key { kid: v["kid"].as_str().map(str::to_string), alg: v["alg"].as_str().map(str::to_string), material })
}

/// Base64url, with or without padding.
fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros.min(v.len().saturating_sub(1)));
    v
}

/// A token taken apart, not yet trusted.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl Decoded<'_> {
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

pub fn decode(token: &str) -> Result<Decoded<'_>, JwtError> {
    let mut parts = token.splitn(3, '.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("not in the form header.payload.signature"));
    };
    if s.contains('.') {
        return Err(JwtError::Malformed("not in the form header.payload.signature"));
    }
    let header: Value = b64(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed("the header is not base64url JSON"))?;
    let claims = match b64(p).and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(Value::Object(m)) => m,
        _ => return Err(JwtError::Malformed("the payload is not a base64url JSON object")),
    };
    let alg = header["alg"].as_str().ok_or(JwtError::Malformed("the header has no alg"))?.to_string();
    let signature = b64(s).ok_or(JwtError::Malformed("the signature is not base64url"))?;
    Ok(Decoded {
        alg,
        kid: header["kid"].as_str().map(str::to_string),
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Checks the signature with a key of `jwks` that fits the token's `kid` and `alg`.
pub fn verify(token: &Decoded<'_>, jwks: &Jwks) -> Result<(), JwtError> {
    use signature as s;
    let alg = token.alg.as_str();
    let (rsa, ec): (Option<&'static s::RsaParameters>, Option<(&'static s::EcdsaVerificationAlgorithm, bool)>) =
        match alg {
            "RS256" => (Some(&s::RSA_PKCS1_2048_8192_SHA256), None),
            "RS384" => (Some(&s::RSA_PKCS1_2048_8192_SHA384), None),
            "RS512" => (Some(&s::RSA_PKCS1_2048_8192_SHA512), None),
            "PS256" => (Some(&s::RSA_PSS_2048_8192_SHA256), None),
            "PS384" => (Some(&s::RSA_PSS_2048_8192_SHA384), None),
            "PS512" => (Some(&s::RSA_PSS_2048_8192_SHA512), None),
            "ES256" => (None, Some((&s::ECDSA_P256_SHA256_FIXED, false))),
            "ES384" => (None, Some((&s::ECDSA_P384_SHA384_FIXED, true))),
            "EdDSA" => (None, None),
            other => return Err(JwtError::Algorithm(other.to_string())),
        };
    let message = token.signing_input.as_bytes();
    let mut tried = false;
    for key in &jwks.keys {
        if token.kid.is_some() && key.kid != token.kid {
            continue;
        }
        if key.alg.as_deref().is_some_and(|a| a != alg) {
            continue;
        }
        let ok = match (&key.material, rsa, ec) {
            (Material::Rsa { n, e }, Some(params), _) => {
                tried = true;
                RsaPublicKeyComponents { n, e }.verify(params, message, &token.signature).is_ok()
            }
            (Material::Ec { p384, point }, _, Some((algorithm, wants_p384))) if *p384 == wants_p384 => {
                tried = true;
                UnparsedPublicKey::new(algorithm, point).verify(message, &token.signature).is_ok()
            }
            (Material::Ed25519(x), None, None) => {
                tried = true;
                UnparsedPublicKey::new(&s::ED25519, x).verify(message, &token.signature).is_ok()
            }
            _ => false,
        };
        if ok {
            return Ok(());
        }
    }
    Err(if tried { JwtError::BadSignature } else { JwtError::NoKey })
}

/// Time claims (with [`SKEW_SECS`]), issuer and audiences.
pub fn check_claims(claims: &Map<String, Value>, issuer: &str, audiences: &[String], now: i64) -> Result<(), JwtError> {
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(JwtError::Issuer);
    }
    let time = |name: &str| claims.get(name).and_then(Value::as_f64).map(|t| t as i64);
    if claims.get("exp").is_some_and(|v| !v.is_number()) || claims.get("nbf").is_some_and(|v| !v.is_number()) {
        return Err(JwtError::Malformed("exp and nbf must be numbers"));
    }
    if time("exp").is_some_and(|exp| now > exp + SKEW_SECS) {
        return Err(JwtError::Expired);
    }
    if time("nbf").is_some_and(|nbf| now + SKEW_SECS < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if !audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.contains(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair as _;

    pub fn enc(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// An ES256 key pair made now: (signing key, its JWK).
    pub fn es256(kid: &str) -> (ring::signature::EcdsaKeyPair, Value) {
        let rng = SystemRandom::new();
        let pkcs8 =
            ring::signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let public = key.public_key().as_ref();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": enc(&public[1..33]), "y": enc(&public[33..65])});
        (key, jwk)
    }

    pub fn sign_es256(key: &ring::signature::EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header.to_string().as_bytes()), enc(claims.to_string().as_bytes()));
        let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", enc(sig.as_ref()))
    }

    fn jwks(keys: &[Value]) -> Jwks {
        Jwks::parse(&serde_json::json!({ "keys": keys }).to_string()).unwrap()
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_algorithm() {
        let (key, jwk) = es256("k1");
        let (_, other_jwk) = es256("k2");
        let claims = serde_json::json!({"iss": "https://auth.example.com", "sub": "alice"});
        let token = sign_es256(&key, &serde_json::json!({"alg": "ES256", "kid": "k1"}), &claims);
        let d = decode(&token).unwrap();
        assert_eq!(verify(&d, &jwks(&[other_jwk.clone(), jwk.clone()])), Ok(()));
        // The kid names a key that is not there; another key does not do.
        assert_eq!(verify(&d, &jwks(std::slice::from_ref(&other_jwk))), Err(JwtError::NoKey));
        // Without a kid every fitting key is tried.
        let no_kid = sign_es256(&key, &serde_json::json!({"alg": "ES256"}), &claims);
        assert_eq!(verify(&decode(&no_kid).unwrap(), &jwks(&[other_jwk.clone(), jwk.clone()])), Ok(()));
        // A tampered payload.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = enc(br#"{"iss":"https://auth.example.com","sub":"mallory"}"#);
        parts[1] = &forged;
        assert_eq!(
            verify(&decode(&parts.join(".")).unwrap(), &jwks(std::slice::from_ref(&jwk))),
            Err(JwtError::BadSignature)
        );
        // `alg: none` and HMAC are refused whatever the key.
        let input = format!("{}.{}", enc(br#"{"alg":"none"}"#), enc(claims.to_string().as_bytes()));
        let none = format!("{input}.");
        assert_eq!(
            verify(&decode(&none).unwrap(), &jwks(std::slice::from_ref(&jwk))),
            Err(JwtError::Algorithm("none".into()))
        );
        let hmac = format!("{}.{}.c2ln", enc(br#"{"alg":"HS256","kid":"k1"}"#), enc(claims.to_string().as_bytes()));
        assert_eq!(verify(&decode(&hmac).unwrap(), &jwks(&[jwk])), Err(JwtError::Algorithm("HS256".into())));
        assert!(matches!(decode("a.b"), Err(JwtError::Malformed(_))));
    }

    /// A fixed 2048-bit RSA test key (ring cannot make RSA keys): (signing key, its JWK).
    pub fn rsa(kid: &str) -> (ring::signature::RsaKeyPair, Value) {
        use rustls_pki_types::pem::PemObject as _;
        let der =
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(include_bytes!("testdata/jwt-rsa-test.pem")).unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
        let (n, e) = (parts.n, parts.e);
        (key, serde_json::json!({"kty": "RSA", "kid": kid, "n": enc(&n), "e": enc(&e)}))
    }

    pub fn sign_rsa(key: &ring::signature::RsaKeyPair, alg: &str, claims: &Value) -> String {
        let padding: &dyn signature::RsaEncoding = match alg {
            "RS256" => &signature::RSA_PKCS1_SHA256,
            "RS512" => &signature::RSA_PKCS1_SHA512,
            "PS256" => &signature::RSA_PSS_SHA256,
            _ => &signature::RSA_PSS_SHA384,
        };
        let header = serde_json::json!({"alg": alg});
        let input = format!("{}.{}", enc(header.to_string().as_bytes()), enc(claims.to_string().as_bytes()));
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(padding, &SystemRandom::new(), input.as_bytes(), &mut sig).unwrap();
        format!("{input}.{}", enc(&sig))
    }

    #[test]
    fn rsa_pkcs1_and_pss_verify() {
        let (key, jwk) = rsa("r1");
        let set = jwks(&[jwk]);
        for alg in ["RS256", "RS512", "PS256", "PS384"] {
            let token = sign_rsa(&key, alg, &serde_json::json!({"iss": "i"}));
            assert_eq!(verify(&decode(&token).unwrap(), &set), Ok(()), "{alg}");
        }
        // The same key's signature under another algorithm's name does not verify.
        let token = sign_rsa(&key, "RS256", &serde_json::json!({"iss": "i"}));
        let relabelled = format!("{}.{}", enc(br#"{"alg":"PS256"}"#), token.split_once('.').unwrap().1);
        assert_eq!(verify(&decode(&relabelled).unwrap(), &set), Err(JwtError::BadSignature));
        // An HMAC token "signed" with the RSA public key as its secret is refused before any check.
        let hs = format!("{}.{}.AAAA", enc(br#"{"alg":"HS256"}"#), enc(br#"{"iss":"i"}"#));
        assert_eq!(verify(&decode(&hs).unwrap(), &set), Err(JwtError::Algorithm("HS256".into())));
    }

    #[test]
    fn eddsa_verifies() {
        let rng = SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": enc(key.public_key().as_ref())});
        let input = format!("{}.{}", enc(br#"{"alg":"EdDSA"}"#), enc(br#"{"iss":"i"}"#));
        let token = format!("{input}.{}", enc(key.sign(input.as_bytes()).as_ref()));
        assert_eq!(verify(&decode(&token).unwrap(), &jwks(&[jwk])), Ok(()));
    }

    #[test]
    fn claims_are_checked_with_a_minute_of_skew() {
        let now = 1_800_000_000;
        let claims = |v: Value| v.as_object().unwrap().clone();
        let iss = "https://auth.example.com";
        let ok = claims(serde_json::json!({"iss": iss, "exp": now + 10, "nbf": now - 10, "aud": ["api", "web"]}));
        assert_eq!(check_claims(&ok, iss, &["api".into()], now), Ok(()));
        assert_eq!(check_claims(&ok, "https://other", &[], now), Err(JwtError::Issuer));
        assert_eq!(check_claims(&ok, iss, &["billing".into()], now), Err(JwtError::Audience));
        let late = claims(serde_json::json!({"iss": iss, "exp": now - 61}));
        assert_eq!(check_claims(&late, iss, &[], now), Err(JwtError::Expired));
        let just = claims(serde_json::json!({"iss": iss, "exp": now - 59}));
        assert_eq!(check_claims(&just, iss, &[], now), Ok(()), "within the skew");
        let early = claims(serde_json::json!({"iss": iss, "nbf": now + 61}));
        assert_eq!(check_claims(&early, iss, &[], now), Err(JwtError::NotYetValid));
    }

    #[test]
    fn jwks_keep_only_usable_public_keys() {
        assert!(
            Jwks::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err().contains("no usable public key")
        );
        assert!(Jwks::parse("not json").unwrap_err().contains("not JSON"));
        let (_, jwk) = es256("a");
        let set = jwks(&[jwk, serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})]);
        assert_eq!(set.len(), 1);
        assert!(set.has_kid("a"));
    }
}
