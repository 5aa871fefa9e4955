//! Compiles proto/kcdsync/v1/*.proto with protox (pure Rust), so building
//! needs no protoc binary.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["kcdsync/v1/agent.proto", "kcdsync/v1/fleet.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // For gRPC server reflection (grpcurl).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kcdsync_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
