//! `sigmavault db`: backup, restore, integrity check, and the append benchmark.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use sigmavault_server::config::Config;
use sigmavault_server::hub::{Hub, HubConfig, NewEvent};
use sigmavault_server::store::{self, Store, StoreConfig, StoreError};

/// `sigmavault db …`
#[derive(Args)]
pub(crate) struct DbArgs {
    /// The server's data directory.
    #[arg(long, env = "SIGMAVAULT_DATA_DIR", default_value = "./data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Write a consistent copy of the database to FILE (safe while the server runs).
    Backup {
        /// Where to write the copy.
        file: PathBuf,
    },
    /// Replace the database with FILE (the server must be stopped). Clients reset.
    Restore {
        /// A backup made by `db backup`.
        file: PathBuf,
    },
    /// Run SQLite's integrity check. Exit 0 when healthy, 2 when damaged.
    Check,
    /// Measure event append throughput (group commit) in a scratch database.
    Bench(BenchArgs),
}

/// `sigmavault db bench`
#[derive(Args)]
struct BenchArgs {
    /// Events to append in total.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Events per publish call (a POST /api/v1/events batch).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Bytes of payload per event.
    #[arg(long, default_value_t = 300)]
    size: usize,
    /// Scratch directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

/// Runs `sigmavault db`.
pub(crate) fn main(args: DbArgs) -> ExitCode {
    let data_dir = args.data_dir;
    let result = match args.command {
        DbCommand::Backup { file } => store::backup::backup(&data_dir, &file).map(|s| {
            println!("backup written to {}", file.display());
            print_summary(&s);
        }),
        DbCommand::Restore { file } => store::backup::restore(&data_dir, &file).map(|s| {
            println!(
                "restored {} into {}; new epoch {} (clients will reset)",
                file.display(),
                data_dir.display(),
                s.epoch
            );
            print_summary(&s);
        }),
        DbCommand::Check => match store::backup::check(&data_dir) {
            Ok(s) => {
                println!("ok: {}", data_dir.join(store::DB_FILE).display());
                print_summary(&s);
                Ok(())
            }
            Err(StoreError::Corrupt(problems)) => {
                eprintln!("damaged: {problems}");
                return ExitCode::from(2);
            }
            Err(e) => Err(e),
        },
        DbCommand::Bench(b) => {
            return crate::report(bench(b));
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(s: &store::backup::DbSummary) {
    println!(
        "schema v{}, epoch {}, last seq {}, {} events, {} notifications, {} shares",
        s.schema_version, s.epoch, s.last_seq, s.events, s.notifications, s.shares
    );
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.publishers > 0,
        "--batch and --publishers must be > 0"
    );
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("cannot create a scratch directory")?;
            tmp.path().to_path_buf()
        }
    };
    sigmavault_server::prepare_data_dir(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let config = Config {
            data_dir: dir,
            ..Config::default()
        };
        // Never a second writer on a live data dir: take its lock like `serve` does.
        let _lock = store::backup::lock_data_dir(&config.data_dir)?;
        let (store, start) = Store::open(StoreConfig::from(&config))?;
        let tracker = tokio_util::task::TaskTracker::new();
        let hub = Hub::with_store(
            HubConfig::from(&config),
            Some(store.clone()),
            start,
            tracker,
            tokio_util::sync::CancellationToken::new(),
        );
        store.attach(hub.clone());
        let payload = "x".repeat(args.size.saturating_sub(40));
        let calls = args.events.div_ceil(args.batch);
        let before = store.store_stats();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..args.publishers {
            let hub = hub.clone();
            let payload = payload.clone();
            let mine = (calls + args.publishers - 1 - p) / args.publishers;
            let batch = args.batch;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(mine);
                for i in 0..mine {
                    let events = (0..batch)
                        .map(|j| NewEvent {
                            kind: "custom.bench".into(),
                            data: json!({"p": p, "i": i, "j": j, "pad": payload}),
                        })
                        .collect();
                    let t = Instant::now();
                    hub.publish(events).await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            }));
        }
        let mut latencies: Vec<Duration> = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let elapsed = started.elapsed();
        let after = store.store_stats();
        store.close().await;
        latencies.sort();
        let pct = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let appended = after.events_appended - before.events_appended;
        let groups = (after.groups - before.groups).max(1);
        let rate = appended as f64 / elapsed.as_secs_f64();
        if args.json {
            println!(
                "{}",
                json!({
                    "events": appended,
                    "seconds": elapsed.as_secs_f64(),
                    "events_per_sec": rate,
                    "commits": groups,
                    "events_per_commit": appended as f64 / groups as f64,
                    "mean_commit_us": after.mean_commit_us,
                    "publish_p50_ms": pct(0.5),
                    "publish_p99_ms": pct(0.99),
                })
            );
        } else {
            println!(
                "appended {appended} events ({} B each, batches of {}, {} publishers) in {:.2} s",
                args.size,
                args.batch,
                args.publishers,
                elapsed.as_secs_f64()
            );
            println!(
                "  {rate:.0} events/s durable (synchronous=FULL), {groups} commits, {:.1} events per commit, \
                 mean commit {} µs",
                appended as f64 / groups as f64,
                after.mean_commit_us
            );
            println!("  publish call latency p50 {:.2} ms, p99 {:.2} ms", pct(0.5), pct(0.99));
        }
        Ok(())
    })
}
