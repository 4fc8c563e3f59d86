//! Compiles `proto/` with protox (pure Rust: no protoc on the build machine) and
//! writes the encoded descriptor set next to the generated code, because
//! `compile_fds` does not: server reflection serves it. Envoy's ext_authz
//! protos (`proto/vendor/`, copied by scripts/vendor-envoy-protos.py) become
//! a descriptor set only, for reflection: their Rust types are envoy-types'.
//!
//! Two passes: messages and clients as the protos say, then the servers on
//! those messages, from a copy of the descriptors in which `WatchTokens`
//! answers `crate::proto::EncodedEvent`, a `TokenEvent` already encoded
//! (the same bytes on the wire), so that an event is encoded once however
//! many streams carry it.

use prost::Message;
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/apitokens/v1/common.proto",
    "proto/apitokens/v1/accounts.proto",
    "proto/apitokens/v1/tokens.proto",
];

const ENVOY_AUTHZ: &str = "proto/vendor/envoy/service/auth/v3/external_auth.proto";

const SECRET_BEARING: &[&str] = &[
    "apitokens.v1.CreateTokenResponse",
    "apitokens.v1.RollTokenResponse",
    "apitokens.v1.VerifyTokenRequest",
    "apitokens.v1.LeakedSecret",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("apitokens_descriptor.bin"), fds.encode_to_vec())?;
    let envoy = protox::compile([ENVOY_AUTHZ], ["proto/vendor"])?;
    fs::write(
        out.join("envoy_authz_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;
    // Messages and clients, as the protos say.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        // Messages that carry a plain secret get a redacting Debug (src/proto.rs).
        .skip_debug(SECRET_BEARING)
        // Smaller per-call buffers: an idle watch stream holds them (src/proto.rs).
        .codec_path("crate::proto::LeanCodec")
        .compile_fds(fds.clone())?;
    // Servers, on the messages above, with one difference the wire cannot
    // see: a watch stream's items are `EncodedEvent`s, bytes encoded once per
    // event for every stream (src/proto.rs).
    let server = out.join("server");
    fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".apitokens.v1", "crate::proto")
        .extern_path(ENCODED_EVENT, "crate::proto::EncodedEvent")
        .codec_path("crate::proto::LeanCodec")
        .out_dir(&server)
        .compile_fds(encoded_watch(fds))?;
    Ok(())
}

const ENCODED_EVENT: &str = ".apitokens.v1.EncodedEvent";

/// `fds` with `WatchTokens` answering `EncodedEvent`s: the same bytes on the
/// wire as the `TokenEvent`s the protos (and reflection) name.
fn encoded_watch(mut fds: prost_types::FileDescriptorSet) -> prost_types::FileDescriptorSet {
    let mut found = false;
    for method in fds
        .file
        .iter_mut()
        .flat_map(|f| f.service.iter_mut())
        .filter(|s| s.name() == "TokenService")
        .flat_map(|s| s.method.iter_mut())
        .filter(|m| m.name() == "WatchTokens")
    {
        assert_eq!(method.output_type(), ".apitokens.v1.TokenEvent");
        method.output_type = Some(ENCODED_EVENT.into());
        found = true;
    }
    assert!(found, "TokenService.WatchTokens is in the protos");
    fds
}
