//! Compiles `proto/` with protox (pure Rust: no protoc on the build machine) and
//! writes the encoded descriptor set next to the generated code, because
//! `compile_fds` does not: server reflection serves it. Envoy's ext_authz
//! protos (`proto/vendor/`, copied by scripts/vendor-envoy-protos.py) become
//! a descriptor set only, for reflection: their Rust types are envoy-types'.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry a plain secret get a redacting Debug (src/proto.rs).
        .skip_debug(SECRET_BEARING)
        // Smaller per-call buffers: an idle watch stream holds them (src/proto.rs).
        .codec_path("crate::proto::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
