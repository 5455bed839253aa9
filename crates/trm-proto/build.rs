//! Compiles `proto/trm/v1/*.proto` with protox (pure Rust: no system `protoc`), then generates
//! the prost messages and tonic services, and keeps the descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const FILES: &[&str] = &[
    "trm/v1/common.proto",
    "trm/v1/referral.proto",
    "trm/v1/returns.proto",
    "trm/v1/hearing.proto",
    "trm/v1/federation.proto",
    "trm/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("trm_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
