//! `meshgate-esdb-codegen PROTOS OUT`: the server side of EventStoreDB's Streams service, from the
//! crate's own `.proto` files, for the stand-in the tests run against.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (protos, out) = match (args.next(), args.next()) {
        (Some(protos), Some(out)) => (protos, out),
        _ => return Err("usage: meshgate-esdb-codegen PROTOS_DIR OUT_DIR".into()),
    };
    std::fs::create_dir_all(&out)?;
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".event_store.client.Empty", "()")
        .out_dir(&out)
        .compile_protos(&[format!("{protos}/streams.proto")], &[protos])?;
    Ok(())
}
