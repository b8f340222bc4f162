//! Generated gRPC types and clients/servers for `syncpay.v1`, and the file
//! descriptor set that server reflection serves.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("syncpay.v1");

/// The encoded `FileDescriptorSet` of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("syncpay_descriptor");
