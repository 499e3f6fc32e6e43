//! The floor of this machine for the hub's latency and idle targets (#3), with no
//! WebSocket library, no async runtime and no JSON: two processes, N loopback TCP
//! connections between them, and the cheapest code that can move bytes.
//!
//! * **fan-out**: the writer process writes one `--size`-byte frame to every
//!   connection (a tight loop of blocking `write`s, split over `--writer-threads`);
//!   the reader process reads them with epoll (`--reader-threads` threads, mio) and
//!   reports when the last one arrived. That is the shortest time in which *any*
//!   server on this box can get one event to N clients read by a separate process.
//! * **ping**: the writer sends a 2-byte WebSocket ping to every connection, in
//!   chunks of N/12 (what the hub's sweeper does every 2.5 s with 30 s pings), the
//!   reader answers each with a 6-byte masked pong, and the writer reads the pongs
//!   with epoll. The writer's CPU per round trip times N/30 s is the least idle CPU
//!   any server can spend on N clients pinged every 30 s.
//!
//! ```text
//! cargo run --release --example loopback_floor -- --clients 19000
//! ```
//!
//! CPU is user + system time of each process from `/proc/self/stat`, as
//! `sigmavault bench` reads the server's.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use mio::{Events, Interest, Poll, Token};

const PING: [u8; 2] = [0x89, 0x00];
const PONG: [u8; 6] = [0x8a, 0x80, 1, 2, 3, 4];

struct Opts {
    clients: usize,
    rounds: usize,
    size: usize,
    writer_threads: usize,
    reader_threads: usize,
    ping_rounds: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--reader") {
        return reader(&args[1..]);
    }
    let mut o = Opts {
        clients: 1000,
        rounds: 5,
        size: 300,
        writer_threads: 1,
        reader_threads: 2,
        ping_rounds: 3,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} takes a number"))?;
        match flag.as_str() {
            "--clients" => o.clients = value,
            "--rounds" => o.rounds = value,
            "--size" => o.size = value.max(16),
            "--writer-threads" => o.writer_threads = value.max(1),
            "--reader-threads" => o.reader_threads = value.max(1),
            "--ping-rounds" => o.ping_rounds = value,
            other => bail!("unknown flag {other}"),
        }
    }
    writer(&o)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// user + system CPU of this process, µs.
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // Fields 14 and 15 of stat are the 12th and 13th after the command name.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000
}

fn writer(o: &Opts) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--reader".to_owned(),
            addr.to_string(),
            o.clients.to_string(),
            o.reader_threads.to_string(),
            o.size.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the reader process")?;
    let mut to_child = child.stdin.take().context("reader stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().context("reader stdout")?);
    let mut conns = Vec::with_capacity(o.clients);
    for _ in 0..o.clients {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let mut line = String::new();
    from_child.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("reader did not start: {line:?}");
    }
    println!(
        "{} connections, {}-byte frames, {} writer thread(s), {} reader thread(s)",
        o.clients, o.size, o.writer_threads, o.reader_threads
    );

    // Fan-out: one frame to every connection, all at once.
    let mut frame = vec![b'x'; o.size];
    frame[0] = 0x81;
    frame[1] = 126;
    frame[2..4].copy_from_slice(&((o.size - 4) as u16).to_be_bytes());
    let conns = Arc::new(conns);
    let mut times = Vec::new();
    let (mut w_cpu, mut r_cpu) = (0u64, 0u64);
    for round in 1..=o.rounds {
        std::thread::sleep(Duration::from_millis(300));
        let (w0, r0) = (cpu_us(), child_cpu(&mut to_child, &mut from_child)?);
        let t0 = now_ns();
        let chunk = o.clients.div_ceil(o.writer_threads);
        std::thread::scope(|scope| {
            for part in conns.chunks(chunk) {
                let frame = &frame;
                scope.spawn(move || {
                    for mut s in part {
                        let _ = s.write_all(frame);
                    }
                });
            }
        });
        let written = now_ns() - t0;
        writeln!(to_child, "wait {round}")?;
        line.clear();
        from_child.read_line(&mut line)?;
        let last: u64 = line.trim().parse().with_context(|| format!("reader said {line:?}"))?;
        let (w1, r1) = (cpu_us(), child_cpu(&mut to_child, &mut from_child)?);
        w_cpu += w1 - w0;
        r_cpu += r1 - r0;
        let all = last.saturating_sub(t0);
        println!(
            "fan-out round {round}: all written in {:.1} ms, all read in {:.1} ms",
            written as f64 / 1e6,
            all as f64 / 1e6
        );
        times.push(all);
    }
    times.sort_unstable();
    let deliveries = (o.clients * o.rounds) as f64;
    if let Some(median) = times.get(times.len() / 2) {
        println!(
            "fan-out: one frame to {} connections, median {:.1} ms; CPU per delivery: writer {:.2} µs, reader {:.2} µs",
            o.clients,
            *median as f64 / 1e6,
            w_cpu as f64 / deliveries,
            r_cpu as f64 / deliveries
        );
    }

    // Pings: N/12 per chunk, pongs read with epoll, as the hub's sweeper sends them.
    if o.ping_rounds > 0 {
        let conns = Arc::try_unwrap(conns).map_err(|_| anyhow::anyhow!("connections still shared"))?;
        ping_phase(o, conns, &mut to_child, &mut from_child)?;
    }
    drop(to_child);
    let _ = child.wait();
    Ok(())
}

fn ping_phase(o: &Opts, conns: Vec<TcpStream>, to_child: &mut impl Write, from_child: &mut impl BufRead) -> Result<()> {
    let mut poll = Poll::new()?;
    let mut socks = Vec::with_capacity(conns.len());
    for (i, s) in conns.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        let mut s = mio::net::TcpStream::from_std(s);
        poll.registry().register(&mut s, Token(i), Interest::READABLE)?;
        socks.push(s);
    }
    let chunk = socks.len().div_ceil(12).max(1);
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 64];
    let (w0, r0) = (cpu_us(), child_cpu(to_child, from_child)?);
    let started = Instant::now();
    let mut pongs = 0usize;
    for _ in 0..o.ping_rounds {
        for start in (0..socks.len()).step_by(chunk) {
            let end = (start + chunk).min(socks.len());
            for s in &mut socks[start..end] {
                s.write_all(&PING)?;
            }
            let want = pongs + (end - start);
            while pongs < want {
                poll.poll(&mut events, Some(Duration::from_secs(5)))?;
                if events.is_empty() {
                    bail!("pongs stopped coming ({pongs} of {want})");
                }
                for ev in events.iter() {
                    let s = &mut socks[ev.token().0];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => bail!("reader closed a connection"),
                            Ok(n) => pongs += n / PONG.len(),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            // Idle between sweeps, so each chunk pays its own wake-ups as the hub's do.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let elapsed = started.elapsed();
    let (w1, r1) = (cpu_us(), child_cpu(to_child, from_child)?);
    let per = (w1 - w0) as f64 / pongs as f64;
    println!(
        "ping: {pongs} round trips in {:.1} s; writer CPU {per:.2} µs per round trip, reader {:.2} µs; \
         {} clients pinged every 30 s would cost the writer {:.2} % of a core",
        elapsed.as_secs_f64(),
        (r1 - r0) as f64 / pongs as f64,
        o.clients,
        per * o.clients as f64 / 30.0 / 1e6 * 100.0
    );
    Ok(())
}

/// Asks the reader for its CPU time.
fn child_cpu(to_child: &mut impl Write, from_child: &mut impl BufRead) -> Result<u64> {
    writeln!(to_child, "cpu")?;
    let mut line = String::new();
    from_child.read_line(&mut line)?;
    line.trim().parse().with_context(|| format!("reader said {line:?}"))
}

/// The client side: connects, then reads frames and answers pings until stdin closes.
fn reader(args: &[String]) -> Result<()> {
    let addr: SocketAddr = args.first().context("address")?.parse()?;
    let clients: usize = args.get(1).context("clients")?.parse()?;
    let threads: usize = args.get(2).context("threads")?.parse()?;
    let size: usize = args.get(3).context("size")?.parse()?;
    let mut socks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        socks.push(mio::net::TcpStream::from_std(s));
    }
    let frames = Arc::new(AtomicU64::new(0));
    let last_ns = Arc::new(AtomicU64::new(0));
    let per = clients.div_ceil(threads).max(1);
    let mut handles = Vec::new();
    while !socks.is_empty() {
        let mine: Vec<_> = socks.drain(..per.min(socks.len())).collect();
        let (frames, last_ns) = (frames.clone(), last_ns.clone());
        handles.push(std::thread::spawn(move || read_loop(mine, size, &frames, &last_ns)));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line == "cpu" {
            writeln!(out, "{}", cpu_us())?;
        } else if let Some(round) = line.strip_prefix("wait ") {
            let target = round.parse::<u64>()? * clients as u64;
            let started = Instant::now();
            while frames.load(Ordering::Acquire) < target {
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("frames stopped arriving");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            writeln!(out, "{}", last_ns.load(Ordering::Acquire))?;
        }
        out.flush()?;
    }
    std::process::exit(0)
}

fn read_loop(mut socks: Vec<mio::net::TcpStream>, size: usize, frames: &AtomicU64, last_ns: &AtomicU64) -> Result<()> {
    let mut poll = Poll::new()?;
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE)?;
    }
    let mut pending = vec![0usize; socks.len()];
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            let i = ev.token().0;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        let mut at = 0;
                        while at < n {
                            if pending[i] == 0 && buf[at] == PING[0] {
                                socks[i].write_all(&PONG)?;
                                at += PING.len();
                                continue;
                            }
                            let take = (size - pending[i]).min(n - at);
                            pending[i] += take;
                            at += take;
                            if pending[i] == size {
                                pending[i] = 0;
                                frames.fetch_add(1, Ordering::AcqRel);
                                last_ns.fetch_max(now_ns(), Ordering::AcqRel);
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}
