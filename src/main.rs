use clap::Parser;

/// jemalloc, which also serves SQLite's `malloc`: its background thread gives freed memory back to
/// the system about a second after it was freed, even when the threads that freed it stay idle
/// (ADR 0015; the setting is compiled in from `.cargo/config.toml`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let runtime = match meshgate::app::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
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
