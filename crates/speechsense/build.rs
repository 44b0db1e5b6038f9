//! Compiles the hand-written SpeechSense `.proto` files with `protox` (pure Rust, no system `protoc`): the wire
//! types and the client stub only (the emulator crate generates its own server stub over these types).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "yandex/cloud/speechsense/v1/talk_service.proto",
        "yandex/cloud/speechsense/v1/audio.proto",
        "yandex/cloud/speechsense/v1/text.proto",
        "yandex/cloud/speechsense/v1/search.proto",
        "yandex/cloud/speechsense/v1/talk.proto",
        "yandex/cloud/speechsense/v1/analysis/analysis.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        // Metadata maps become BTreeMap (stable order in logs and tests); audio chunks are `Bytes` (zero-copy).
        .btree_map(".")
        .bytes(".")
        .include_file("_includes.rs")
        .compile_fds(fds)?;
    Ok(())
}
