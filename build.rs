//! Compiles proto/ into Rust and writes the descriptor set that server reflection serves.
//! protoc comes from the `protoc-bin-vendored` crate, so no system install is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded at this point.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        unsafe { env::set_var("PROTOC", protoc) };
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("wrn_descriptor.bin"))
        .compile_protos(&["proto/wrn/v1/classifier.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
