use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

/// The runtime answering requests. The log's writer runs on a thread of its own and is on the
/// path of every accepted webhook, so by default the runtime takes one worker thread fewer than
/// there are cores (at least one) and leaves the writer a core; `TOKIO_WORKER_THREADS` overrides.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.enable_all().build()
}

async fn run() -> std::process::ExitCode {
    let cli = meshgate::cli::Cli::parse();
    // The format comes from the configuration (`[log] format`); a configuration that does not load
    // is reported by the command itself, in the default format.
    let format = meshgate::config::Config::load(cli.config.as_deref()).map(|c| c.log.format).unwrap_or_default();
    // The stream index's engine reports each run it writes and merges at `info`: routine.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        meshgate::config::LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).init(),
        meshgate::config::LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
    }
    match meshgate::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", meshgate::report::chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
