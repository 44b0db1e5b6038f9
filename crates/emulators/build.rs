//! Generates the `TalkService` server stub for the SpeechSense emulator from the client crate's `.proto` files.
//!
//! Why here: the production `b24sense-speechsense` crate is client-only. The message types are not generated
//! again: `extern_path` points them at `b24sense_speechsense::proto`, so the emulator and the client share one set
//! of wire types; the service's file is enough, `protox` follows its imports. `protox` is pure Rust (no system
//! `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../speechsense/proto";
    println!("cargo:rerun-if-changed={proto_dir}");
    let fds = protox::compile(
        ["yandex/cloud/speechsense/v1/talk_service.proto"],
        [proto_dir],
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(
            ".yandex.cloud.speechsense.v1",
            "::b24sense_speechsense::proto::yandex::cloud::speechsense::v1",
        )
        .include_file("_includes.rs")
        .compile_fds(fds)?;
    Ok(())
}
