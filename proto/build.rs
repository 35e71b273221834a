//! Generates the `sonde.v1` Rust code from `proto/sonde/v1/*.proto` with the
//! protoc the README installs (`protobuf-compiler`). With the `grpc` feature
//! the tonic client and server are generated too.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/sonde/v1/record.proto", "proto/sonde/v1/agent.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        tonic_build::configure()
            .build_server(true)
            .build_client(true)
            .build_transport(false)
            .compile_protos(&protos, &["proto"])?;
    } else {
        prost_build::Config::new().compile_protos(&protos, &["proto"])?;
    }
    Ok(())
}
