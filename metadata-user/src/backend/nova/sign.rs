//! The proof nova asks of a metadata proxy: `X-Instance-ID-Signature`, the
//! hex HMAC-SHA256 of the instance ID under the shared secret. nova
//! recomputes it and compares in constant time (nova/api/metadata/handler.py).
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub fn sign_instance_id(secret: &[u8], instance_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(instance_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_hmac_hexdigest() {
        // python3: hmac.new(b"s3cret", b"6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e001", hashlib.sha256).hexdigest()
        assert_eq!(
            sign_instance_id(b"s3cret", "6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e001"),
            "ebf95c7f5fe0bc398d487d6a1c2d791966c8e85454c37c5c1c7a2b86e55943de"
        );
    }
}
