//! Generated protobuf and gRPC code for `apitokens.v1`, and the encoded
//! descriptor set that server reflection serves. Hand-written here is only
//! what concerns the wire (redacting Debug, the codec's buffers, the
//! pre-encoded event a watch stream sends); translation to and from domain
//! types is `service::convert`'s job.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("apitokens.v1");

/// The servers, generated apart (build.rs) so that `WatchTokens` streams
/// [`EncodedEvent`]s.
mod servers {
    include!(concat!(env!("OUT_DIR"), "/server/apitokens.v1.rs"));
}
pub use servers::{account_service_server, token_service_server};

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

/// A `TokenEvent`, already encoded: what a watch stream sends. However many
/// streams carry an event, it is encoded once and each stream copies the
/// bytes into its frame (clones share them). The bytes on the wire are the
/// `TokenEvent`'s: clients, reflection and the protos never see this type.
#[derive(Clone, Default, PartialEq)]
pub struct EncodedEvent(bytes::Bytes);

impl EncodedEvent {
    pub fn new(event: &TokenEvent) -> EncodedEvent {
        EncodedEvent(prost::Message::encode_to_vec(event).into())
    }

    /// The event these bytes encode.
    pub fn event(&self) -> Result<TokenEvent, prost::DecodeError> {
        prost::Message::decode(self.0.clone())
    }
}

/// Events carry no secret, but a Debug of their bytes says nothing: show
/// the event.
impl std::fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.event() {
            Ok(event) => f.debug_tuple("EncodedEvent").field(&event).finish(),
            Err(e) => write!(f, "EncodedEvent(undecodable: {e})"),
        }
    }
}

impl prost::Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    /// Only for completeness (a server never decodes what it sends): merges
    /// the field into the event and keeps the result's encoding.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let mut event = self.event()?;
        event.merge_field(tag, wire_type, buf, ctx)?;
        *self = EncodedEvent::new(&event);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod encoded_tests {
    use super::{EncodedEvent, Token, TokenEvent};
    use prost::Message;

    fn event() -> TokenEvent {
        TokenEvent {
            revision: 42,
            r#type: 3,
            token: Some(Token {
                id: "TKN-1".into(),
                name: "ci".into(),
                modules: vec!["reports".into()],
                ..Default::default()
            }),
            time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 2,
            }),
            actor: "ACC-1".into(),
        }
    }

    #[test]
    fn an_encoded_event_is_the_events_bytes() {
        let encoded = EncodedEvent::new(&event());
        assert_eq!(encoded.encode_to_vec(), event().encode_to_vec());
        assert_eq!(encoded.encoded_len(), event().encoded_len());
        assert_eq!(
            TokenEvent::decode(&*encoded.encode_to_vec()).unwrap(),
            event()
        );
    }

    #[test]
    fn decoding_into_an_encoded_event_keeps_the_event() {
        let decoded = EncodedEvent::decode(&*event().encode_to_vec()).unwrap();
        assert_eq!(decoded.event().unwrap(), event());
        assert_eq!(decoded, EncodedEvent::new(&event()));
        assert!(format!("{decoded:?}").contains("TKN-1"));
    }
}
