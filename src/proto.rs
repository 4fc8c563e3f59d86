//! Generated protobuf and gRPC code for `apitokens.v1`, and the encoded
//! descriptor set that server reflection serves. Hand-written here is only
//! what concerns the wire (redacting Debug, the codec's buffers); translation
//! to and from domain types is `service::convert`'s job.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("apitokens.v1");

/// Every file of `proto/` and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/apitokens_descriptor.bin"));

/// Envoy's `envoy.service.auth.v3` and its imports, for reflection only
/// (the types are envoy-types'): grpcurl can describe and call `Check`.
pub const ENVOY_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_authz_descriptor.bin"));

/// Secrets never reach Debug output (logs, panics, test failures).
impl std::fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for RollTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollTokenResponse")
            .field("token", &self.token)
            .field("secret", &"<redacted>")
            .field("replaced", &self.replaced)
            .field("revision", &self.revision)
            .finish()
    }
}

impl std::fmt::Debug for LeakedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakedSecret")
            .field("secret", &"<redacted>")
            .field("url", &self.url)
            .field("source", &self.source)
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
        let roll = super::RollTokenResponse {
            secret: secret.into(),
            ..Default::default()
        };
        let leak = super::LeakedSecret {
            secret: secret.into(),
            ..Default::default()
        };
        let report = super::ReportLeakedSecretsRequest {
            secrets: vec![leak.clone()],
        };
        for shown in [
            format!("{r:?}"),
            format!("{v:?}"),
            format!("{roll:?}"),
            format!("{leak:?}"),
            format!("{report:?}"),
        ] {
            assert!(!shown.contains("abcdefghij"), "{shown}");
        }
    }
}

/// tonic's prost codec with smaller starting buffers. Every call, and every
/// watch stream for as long as it stays open, holds an encode and a decode
/// buffer; tonic starts each at 8 KiB, which made up most of what an idle
/// watch stream cost. Tokens and events are a few hundred bytes, so the
/// buffers start at 1 KiB and grow for a larger message. The yield threshold
/// stays tonic's.
pub struct LeanCodec<T, U>(std::marker::PhantomData<(T, U)>);

fn lean_buffers() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(1024, 32 * 1024)
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(lean_buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(lean_buffers())
    }
}
