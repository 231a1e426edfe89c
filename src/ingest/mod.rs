//! Ingest: the mTLS gRPC `Publisher` service, with health and reflection beside it.

pub mod codec;
pub(crate) mod pipeline;
pub(crate) mod publisher;
mod rate;

pub use rate::RateLimiter;

/// Generated protobuf messages and services (`ssegateway.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("ssegateway.v1");

    /// Encoded descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("ssegateway_descriptor");
}
