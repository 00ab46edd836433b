//! The JWK Set verifiers need (`metadata-redirector identity jwks`): the
//! certificate's public key, with the same `kid` the tokens carry.
use serde_json::{Map, Value, json};

use super::{IdentityKey, key::jwk_members};

pub fn jwks(key: &IdentityKey) -> anyhow::Result<Value> {
    let mut jwk: Map<String, Value> = jwk_members(&key.public()?, key.kind())?
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Value::String(value)))
        .collect();
    jwk.insert("alg".into(), key.kind().jws_alg().into());
    jwk.insert("use".into(), "sig".into());
    jwk.insert("kid".into(), key.kid().into());
    Ok(json!({ "keys": [jwk] }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::identity::key::test_keys::{p256, rsa, self_signed};

    #[test]
    fn one_key_with_the_tokens_kid() {
        for private in [rsa(2048), p256()] {
            let key = IdentityKey::new(private.clone(), self_signed(&private)).unwrap();
            let set = jwks(&key).unwrap();
            let jwk = &set["keys"][0];
            assert_eq!(jwk["kid"], key.kid());
            assert_eq!(jwk["alg"], key.kind().jws_alg());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(set["keys"].as_array().unwrap().len(), 1);
        }
    }
}
