//! `sigmavault bench`: a load generator for the hub, run as a separate process.
//!
//! Phases: connect `--clients` subscribers (and `--slow` ones that never read) → publish
//! `--rounds` back-to-back bursts (then start draining the slow clients, expecting 4008)
//! → single probe events for fan-out completion → a `--rate` steady phase → stop every
//! client → report.
//! Every wait is bounded (`--drain-timeout` without progress, `--deadline` overall), so
//! the bench always ends by itself with a report.

mod args;
mod clients;
mod measure;
mod phases;
mod proc;
mod progress;
mod publisher;
mod rawws;
mod report;
mod scan;
mod slow;
mod stats;
mod tracker;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub(crate) use self::args::BenchArgs;
use self::args::PORTS_PER_SOURCE_IP;
use self::clients::{ClientOutcome, Shared, run_client};
use self::phases::{publish_burst, publish_steady, run_probes, wait_for};
use self::proc::{Pid, ProcFs};
use self::progress::Progress;
use self::publisher::Publisher;
use self::report::{ProcessReport, Report, SteadyReport};
use crate::client::Target;

/// Runs the bench, prints the report, and fails if delivery was not exactly-once in order
/// (or clients failed to connect, or slow clients were not closed with 4008).
pub(crate) fn run(args: BenchArgs) -> Result<()> {
    args.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = Progress::new();
    // `timeout` needs the runtime's timer, so it is built inside `block_on`.
    let outcome = runtime.block_on(async { tokio::time::timeout(args.deadline, bench(&args, &progress)).await });
    progress.finish();
    // Stragglers (a client stuck in a close) must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = match outcome {
        Ok(report) => report?,
        Err(_) => bail!(
            "the bench exceeded --deadline {}",
            humantime::format_duration(args.deadline)
        ),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.ok {
        Ok(())
    } else {
        bail!("bench failed: {}", report.problems.join("; "))
    }
}

async fn bench(args: &BenchArgs, progress: &Progress) -> Result<Report> {
    if args.url.scheme() == "wss" {
        bail!(
            "{}: bench speaks ws:// only (a load generator for a server on this machine or network)",
            args.url
        );
    }
    let target = Arc::new(Target::resolve(&args.url, None).await?);
    if args.source_ips > 1 && !(target.addr.is_ipv4() && target.addr.ip().is_loopback()) {
        bail!("--source-ips needs a server on 127.0.0.0/8; {} is not", target.addr);
    }
    // Below 2^53 so the id survives any JSON consumer's float parsing.
    let run = rand::random::<u64>() >> 12;
    let publisher = Publisher::new(&args.url, args.token.clone(), run, args.size)?;
    let mut warnings = Vec::new();
    if let Some(warning) = publisher.check_health().await? {
        warnings.push(warning);
    }
    if args.clients + args.slow > PORTS_PER_SOURCE_IP * usize::from(args.source_ips) {
        warnings.push(format!(
            "{} sockets from {} source address(es) may exhaust ephemeral ports; use --source-ips",
            args.clients + args.slow,
            args.source_ips
        ));
    }
    let procfs = ProcFs::from_env();
    let server_pid = args.server_pid;
    let server_sample = |what: &str| -> Option<proc::Sample> {
        let pid = server_pid?;
        procfs
            .sample(Pid::Other(pid))
            .map_err(|e| progress.note(&format!("cannot sample server {what}: {e:#}")))
            .ok()
    };
    let self_sample = || procfs.sample(Pid::Myself).ok();
    let server_start = match server_pid {
        Some(pid) => Some(procfs.sample(Pid::Other(pid)).context("--server-pid")?),
        None => None,
    };
    let self_start = self_sample();
    let shared = Arc::new(Shared::new(run, args.probes, args.heartbeat));

    // Connect.
    progress.phase("connect", args.clients as u64);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let connect_started = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|i| {
            let opts = args.connect_options(i, None);
            tokio::spawn(run_client(shared.clone(), target.clone(), opts, gate.clone()))
        })
        .collect();
    let settled = || (shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)) as u64;
    wait_for(settled, || args.clients as u64, Duration::from_secs(60), Some(progress)).await;
    let connect_elapsed = connect_started.elapsed();
    let server_connected = server_sample("after connecting");
    let ready = shared.ready.load(Ordering::Relaxed) as u64;
    let queue = shared.queue_events.load(Ordering::Relaxed);
    if queue > 0 && args.batch > queue {
        warnings.push(format!(
            "--batch {} is larger than the server's per-client queue ({queue} events): one batch can \
             overflow every subscriber at once",
            args.batch
        ));
    }

    let idle = if args.idle.is_zero() {
        None
    } else {
        progress.note(&format!(
            "holding {ready} clients idle for {}",
            humantime::format_duration(args.idle)
        ));
        let before = server_sample("before idle");
        let started = Instant::now();
        tokio::time::sleep(args.idle).await;
        let seconds = started.elapsed().as_secs_f64();
        let after = server_sample("after idle");
        before.zip(after).map(|(b, a)| {
            let cpu_ms = a.cpu_us.saturating_sub(b.cpu_us) as f64 / 1000.0;
            report::IdleReport {
                clients: ready,
                seconds,
                server_cpu_ms: cpu_ms,
                server_core_percent: cpu_ms / 10.0 / seconds.max(1e-9),
            }
        })
    };

    let slow_clients = if args.slow > 0 {
        progress.note(&format!("connecting {} slow clients", args.slow));
        let opts = (0..args.slow)
            .map(|k| args.connect_options(args.clients + k, Some(slow::SLOW_RECV_BUFFER)))
            .collect();
        Some(slow::connect_slow(target.clone(), opts).await)
    } else {
        None
    };

    // Bursts.
    progress.phase("burst", ready * (args.rounds * args.burst) as u64);
    let server_burst_start = server_sample("at burst start");
    let self_burst_start = self_sample();
    let burst_started = Instant::now();
    let burst = publish_burst(&publisher, args.rounds, args.burst, args.batch).await;
    let slow_drain = slow_clients.map(|c| slow::spawn_drain(c, run, args.drain_timeout));
    let burst_expected = ready * burst.seqs.len() as u64;
    let burst_complete = wait_for(
        || shared.burst.count(),
        || burst_expected,
        args.drain_timeout,
        Some(progress),
    )
    .await;
    let burst_wall = burst_started.elapsed();
    let server_burst_end = server_sample("at burst end");
    let self_burst_end = self_sample();

    let fanout = run_probes(&publisher, &shared, args.drain_timeout, progress).await;

    let steady = if args.rate > 0.0 && !args.duration.is_zero() {
        let published = publish_steady(&publisher, args.rate, args.duration, args.batch, progress).await;
        let expected = ready * published.seqs.len() as u64;
        progress.phase("drain", expected);
        let complete = wait_for(
            || shared.steady.count(),
            || expected,
            args.drain_timeout,
            Some(progress),
        )
        .await;
        Some((published, expected, complete))
    } else {
        None
    };

    // Stop and collect.
    progress.phase("stop", args.clients as u64);
    shared.stop.cancel();
    let mut outcomes = Vec::with_capacity(handles.len());
    for handle in handles {
        outcomes.push(handle.await.unwrap_or_else(|e| ClientOutcome {
            error: Some(format!("client task failed: {e}")),
            ..ClientOutcome::default()
        }));
        progress.set(outcomes.len() as u64);
    }
    let slow = match slow_drain {
        Some(task) => {
            progress.phase("slow", args.slow as u64);
            let drained = task.await.context("slow-client drain task")?;
            Some(slow::verify(drained, args.slow))
        }
        None => None,
    };
    let hub = publisher.hub_stats().await;
    let server_end = server_sample("at the end");
    let self_end = self_sample();

    // Assemble.
    let mut problems = Vec::new();
    let mut all_seqs = burst.seqs.clone();
    all_seqs.extend(&fanout.published.seqs);
    let burst_deliveries = shared.burst.count();
    let last_burst_ns = outcomes.iter().map(|o| o.last_burst_ns).max().unwrap_or(0);
    let delivery_ns = last_burst_ns.saturating_sub(burst.first_sent_ns);
    let mut report_steady = None;
    if let Some((published, expected, complete)) = &steady {
        all_seqs.extend(&published.seqs);
        if let Some(e) = &published.error {
            problems.push(format!("steady publish failed: {e}"));
        }
        report_steady = Some(SteadyReport {
            target_rate: args.rate,
            achieved_rate: published.seqs.len() as f64 / published.elapsed.as_secs_f64().max(1e-9),
            events: published.seqs.len(),
            expected_deliveries: *expected,
            deliveries: shared.steady.count(),
            complete: *complete,
            latency: shared.steady.snapshot().summary(),
        });
    }
    for (what, error) in [("burst", &burst.error), ("probe", &fanout.published.error)] {
        if let Some(e) = error {
            problems.push(format!("{what} publish failed: {e}"));
        }
    }
    let connect = measure::connect_report(&outcomes, args.clients, connect_elapsed);
    if connect.failed > 0 {
        problems.push(format!("{} clients failed to connect", connect.failed));
    }
    let delivery = measure::delivery_report(&outcomes, &all_seqs);
    if delivery.lost + delivery.duplicated + delivery.out_of_order > 0 {
        problems.push(format!(
            "lost {}, duplicated {}, out of order {}",
            delivery.lost, delivery.duplicated, delivery.out_of_order
        ));
    }
    if delivery.dropped_connections > 0 {
        problems.push(format!(
            "{} subscribers were disconnected by the server: {:?}",
            delivery.dropped_connections, delivery.drop_reasons
        ));
    }
    if delivery.close_reason_mismatches > 0 {
        problems.push(format!(
            "{} close reasons named a last_seq other than the last event received",
            delivery.close_reason_mismatches
        ));
    }
    if let Some(slow) = slow.as_ref().filter(|s| !s.ok()) {
        problems.push(format!(
            "{} of {} slow clients were closed with 4008",
            slow.closed_slow_consumer, slow.requested
        ));
    }
    let server = measure::server_report(
        server_pid,
        [
            server_start,
            server_connected,
            server_burst_start,
            server_burst_end,
            server_end,
        ],
        ready,
        burst_deliveries,
    );
    // The busy part of the burst (first publish → last delivery), not the idle tail of
    // the drain wait; fall back to the whole phase when nothing was delivered.
    let busy = if delivery_ns > 0 {
        Duration::from_nanos(delivery_ns)
    } else {
        burst_wall
    };
    let bench_process = match (self_start, self_burst_start, self_burst_end, self_end) {
        (Some(s0), Some(b0), Some(b1), Some(s1)) => ProcessReport {
            cpu_total_ms: s1.cpu_us.saturating_sub(s0.cpu_us) as f64 / 1000.0,
            cpu_burst_ms: b1.cpu_us.saturating_sub(b0.cpu_us) as f64 / 1000.0,
            burst_core_percent: b1.cpu_us.saturating_sub(b0.cpu_us) as f64 / 1e4 / busy.as_secs_f64().max(1e-9),
            rss_kib: s1.rss_kib,
        },
        _ => ProcessReport::default(),
    };
    Ok(Report {
        ok: problems.is_empty(),
        problems,
        run_id: run,
        url: args.url.to_string(),
        settings: args.settings(),
        connect,
        burst: report::BurstReport {
            events: burst.seqs.len(),
            expected_deliveries: burst_expected,
            deliveries: burst_deliveries,
            publish_ms: burst.elapsed.as_secs_f64() * 1000.0,
            delivery_ms: delivery_ns as f64 / 1e6,
            deliveries_per_s: burst_deliveries as f64 / (delivery_ns as f64 / 1e9).max(1e-9),
            complete: burst_complete,
            latency: shared.burst.snapshot().summary(),
        },
        fanout: measure::fanout_report(&fanout),
        steady: report_steady,
        idle,
        delivery,
        slow,
        server,
        bench_process,
        hub,
        warnings,
    })
}
