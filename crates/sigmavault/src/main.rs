//! The `sigmavault` binary: a thin CLI over the server library and the clients.
//!
//! `anyhow` lives here and nowhere else: the library returns typed errors.

mod bench;
mod client;
mod db;
mod user;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// SigmaVault: NAS management server and its clients.
#[derive(Parser)]
#[command(name = "sigmavault", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP API under /api/v1 and the WebSocket hub at /ws).
    Serve(Box<sigmavault_server::config::ServeArgs>),
    /// Connect to a server and print every message, reconnecting and resuming.
    Watch(watch::WatchArgs),
    /// Load-test a running server's hub and report throughput, latency and memory.
    Bench(bench::BenchArgs),
    /// Back up, restore or check the database; benchmark event appends.
    Db(db::DbArgs),
    /// Manage user accounts in the data dir (server stopped).
    User(user::UserArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => sigmavault_server::cli::serve_main(*args),
        Command::Watch(args) => report(watch::run(args)),
        Command::Bench(args) => report(bench::run(args)),
        Command::Db(args) => db::main(args),
        Command::User(args) => user::main(args),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
