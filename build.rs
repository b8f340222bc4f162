//! Compiles `proto/` with protox (pure Rust, no protoc needed) and writes the
//! file descriptor set to OUT_DIR for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(["syncpay/v1/syncpay.proto"], ["proto"])?;
    std::fs::write(out_dir.join("syncpay_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::SyncpayCodec")
        .compile_fds(fds)?;
    Ok(())
}
