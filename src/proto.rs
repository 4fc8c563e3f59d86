//! Generated protobuf and gRPC code for `apitokens.v1`, and the encoded
//! descriptor set that server reflection serves. Nothing hand-written lives
//! here: translation to and from domain types is `service::convert`'s job.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("apitokens.v1");

/// Every file of `proto/` and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/apitokens_descriptor.bin"));

/// Secrets never reach Debug output (logs, panics, test failures).
impl std::fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for VerifyTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyTokenRequest")
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_bearing_messages_redact_debug() {
        let secret = "idt:TKN-1234-5678:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";
        let r = super::CreateTokenResponse {
            token: None,
            secret: secret.into(),
        };
        let v = super::VerifyTokenRequest {
            secret: secret.into(),
        };
        for shown in [format!("{r:?}"), format!("{v:?}")] {
            assert!(!shown.contains("abcdefghij"), "{shown}");
        }
    }
}
