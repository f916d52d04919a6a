//! Runs the local Poe double by hand (the offline demo uses it):
//! `cargo run --example poe-double -- [--port N] [--mode 2023|2025] [--logged-out]
//! [--daily-limit] [--points N] [--chunk-delay-ms N]`.
//! Prints `poe-double listening on http://127.0.0.1:PORT` once bound, then serves until
//! SIGINT or SIGTERM.

#[path = "../tests/double/mod.rs"]
mod double;

use std::io::Write;

use clap::Parser;

#[derive(Parser)]
#[command(about = "A local copy of Poe's chat site and update WebSocket")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Which picture of poe.com to follow: 2025 (today's evidence) or 2023.
    #[arg(long, default_value = "2025", value_parser = parse_mode)]
    mode: double::Mode,
    /// Serve the signed-out site (signing in at /login still works).
    #[arg(long)]
    logged_out: bool,
    /// 2023: the daily free messages are used up. 2025: sends are refused with reached_limit.
    #[arg(long)]
    daily_limit: bool,
    /// 2025: the points balance at start.
    #[arg(long, default_value_t = 3000)]
    points: u64,
    /// Milliseconds between streamed updates.
    #[arg(long, default_value_t = 20)]
    chunk_delay_ms: u64,
}

fn parse_mode(s: &str) -> Result<double::Mode, String> {
    double::Mode::parse(s).ok_or_else(|| format!("unknown mode {s:?}: use 2023 or 2025"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let double = double::Double::start_on(
        std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        double::DoubleOptions {
            mode: args.mode,
            logged_in: !args.logged_out,
            daily_limit: args.daily_limit,
            points: args.points,
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
