//! Generates the gRPC service and messages from `proto/`, plus a descriptor set for reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; setting PROTOC before codegen is the documented way.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // A request that does not decode is INVALID_ARGUMENT, not prost's INTERNAL.
        .codec_path("crate::ingest::codec::ProtoCodec")
        .file_descriptor_set_path(out_dir.join("ssegateway_descriptor.bin"))
        .compile_protos(&["proto/ssegateway/v1/gateway.proto"], &["proto"])?;
    Ok(())
}
