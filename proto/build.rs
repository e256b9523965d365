//! Compiles the etcd v3 protos and Cairn's peer protocol with protox so that building Cairn needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcdserverpb/rpc.proto",
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/cairnpb/peer.proto",
        "proto/cairnpb/watch_wire.proto",
        "proto/cairnpb/migrate.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Shared, reference-counted: one encoding serves every watcher.
        .bytes(".cairnpb.wire.WatchResponse.events")
        .compile_fds(fds)?;

    // etcdserverpb.Watch/Watch once more, on the same path, answering with
    // the pre-encoded cairnpb.wire.WatchResponse in smaller chunks
    // (src/watch_codec.rs). The generated file is `etcdserverpb.Watch.rs`,
    // beside prost's `etcdserverpb.rs`.
    let watch = tonic_build::manual::Service::builder()
        .name("Watch")
        .package("etcdserverpb")
        .method(
            tonic_build::manual::Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::etcdserverpb::WatchRequest")
                .output_type("crate::cairnpb::wire::WatchResponse")
                .codec_path("crate::watch_codec::WatchCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_server(true)
        .compile(&[watch]);
    Ok(())
}
