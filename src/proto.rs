//! Generated protobuf and gRPC code for `apitokens.v1`, and the encoded
//! descriptor set that server reflection serves. Nothing hand-written lives
//! here: translation to and from domain types is `service::convert`'s job.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("apitokens.v1");

/// Every file of `proto/` and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/apitokens_descriptor.bin"));
