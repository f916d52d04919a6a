//! Runs the local Poe double by hand (the offline demo uses it):
//! `cargo run --example poe-double -- [--port N] [--logged-out] [--daily-limit] [--chunk-delay-ms N]`.
//! Prints `poe-double listening on http://127.0.0.1:PORT` once bound, then serves until
//! SIGINT or SIGTERM.

#[path = "../tests/double/mod.rs"]
mod double;

use std::io::Write;

use clap::Parser;

#[derive(Parser)]
#[command(about = "A local copy of Poe's chat page and update WebSocket")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Serve the logged-out view (a `p-b` cookie, e.g. from /login, still signs in).
    #[arg(long)]
    logged_out: bool,
    /// The daily free messages are used up.
    #[arg(long)]
    daily_limit: bool,
    /// Milliseconds between streamed updates.
    #[arg(long, default_value_t = 20)]
    chunk_delay_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let double = double::Double::start_on(
        std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        double::DoubleOptions {
            logged_in: !args.logged_out,
            daily_limit: args.daily_limit,
            chunk_delay_ms: args.chunk_delay_ms,
            ..Default::default()
        },
    )
    .await?;
    let mut out = std::io::stdout();
    writeln!(out, "poe-double listening on {}", double.base_url())?;
    out.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    double.shutdown().await;
    Ok(())
}
