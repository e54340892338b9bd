//! Mutual TLS on real processes: a TLS cluster elects, replicates and
//! survives a leader kill, and each intruder is refused or cut off without
//! harming it: a peer with another CA's certificate, a node certificate
//! used for another id, a client certificate trying `fault`, a plaintext
//! client, a proxy that flips or replays bytes on a live peer link, and
//! thousands of idle or slow connections.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{make_certs, put, TestCluster};
use raftkit::client::Client;
use raftkit::config::Config;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::NodeId;
use raftkit::wire::{
    decode_frame, encode_frame, ErrorCode, FaultSpec, Frame, RequestBody, ResponseBody, Sender,
};

/// `config` showing another certificate.
fn with_cert(config: &Config, dir: &Path, stem: &str) -> Config {
    let mut c = config.clone();
    let tls = c.tls.as_mut().expect("a TLS config");
    tls.client_cert = Some(dir.join(format!("{stem}.pem")));
    tls.client_key = Some(dir.join(format!("{stem}.key")));
    c
}

fn client_of(config: Config, node: u64) -> Client {
    let mut c = Client::new(config, Some(NodeId(node)));
    c.timeout = Duration::from_secs(20);
    c
}

/// Opens a TLS connection to `addr` (node `node`) trusting `ca` and
/// showing `stem`'s certificate from `dir`, sends one Hello, and returns
/// the answer (or why there is none).
fn raw_hello(
    addr: SocketAddr,
    node: u64,
    ca: &Path,
    dir: &Path,
    stem: &str,
    cluster: &str,
    from: Sender,
) -> Result<Frame, String> {
    let config = raftkit::tls::client_config(
        ca,
        &dir.join(format!("{stem}.pem")),
        &dir.join(format!("{stem}.key")),
    )
    .map_err(|e| e.to_string())?;
    let session = raftkit::tls::connect_to(&config, NodeId(node)).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(session, tcp);
    let mut out = Vec::new();
    encode_frame(
        &Frame::Hello {
            cluster: cluster.to_string(),
            from,
        },
        &mut out,
    );
    s.write_all(&out).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, _)) = decode_frame(&buf).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn log_of(c: &TestCluster, id: u64) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("n{id}.log"))).unwrap_or_default()
}

/// Waits until node `id`'s log has `n` lines containing `what`.
fn wait_log(c: &TestCluster, id: u64, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = log_of(c, id).lines().filter(|l| l.contains(what)).count();
        if got >= n {
            return;
        }
        let others: Vec<String> = (1..=3)
            .filter(|&i| i != id)
            .map(|i| format!("n{i}:\n{}", log_of(c, i)))
            .collect();
        assert!(
            Instant::now() < deadline,
            "n{id} logged {got} lines with {what:?}, want {n}:\n{}\n{}",
            log_of(c, id),
            others.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tls_cluster_works_refuses_intruders_and_survives_leader_kill() {
    let mut c = TestCluster::start_tls(3);
    let certs = c.dir.path().join("certs");
    let leader = c.wait_leader(&[1, 2, 3]);
    let mut client = c.client();
    put(&mut client, "a", "1");
    c.wait_value_everywhere(&[1, 2, 3], "a", "1");
    let addr = c.config.node(NodeId(1)).expect("n1").addr;
    let ca = certs.join("ca.pem");

    // A client certificate may read and write, not inject faults.
    let mut plain_user = client_of(c.config.clone(), leader);
    match plain_user.call(NodeId(leader), RequestBody::Fault(FaultSpec::default())) {
        Ok(ResponseBody::Error { code, message }) => {
            assert_eq!(code, ErrorCode::Forbidden, "{message}");
            assert!(message.contains("admin"), "{message}");
        }
        other => panic!("a client certificate ran fault: {other:?}"),
    }
    wait_log(&c, leader, "refusing fault from a client certificate", 1);
    // The admin certificate may.
    let mut admin = client_of(with_cert(&c.config, &certs, "admin"), leader);
    let r = admin.call(NodeId(leader), RequestBody::Fault(FaultSpec::default()));
    assert!(matches!(r, Ok(ResponseBody::FaultOk)), "admin fault: {r:?}");

    // A node's certificate used for another id: refused at the Hello.
    match raw_hello(addr, 1, &ca, &certs, "n3", "test", Sender::Peer(NodeId(2))) {
        Ok(Frame::HelloReject { code, reason }) => {
            assert_eq!(code, ErrorCode::Forbidden);
            assert!(reason.contains("not n2's"), "{reason}");
        }
        other => panic!("n3's certificate posed as n2: {other:?}"),
    }
    wait_log(&c, 1, "the certificate is not n2's", 1);
    // A client certificate cannot open a peer link.
    match raw_hello(
        addr,
        1,
        &ca,
        &certs,
        "client",
        "test",
        Sender::Peer(NodeId(2)),
    ) {
        Ok(Frame::HelloReject { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("a client certificate opened a peer link: {other:?}"),
    }
    // A node's certificate cannot act as a client.
    match raw_hello(addr, 1, &ca, &certs, "n3", "test", Sender::Client) {
        Ok(Frame::HelloReject { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("a node certificate opened a client connection: {other:?}"),
    }

    // A peer with another CA's certificate for n2: TLS refuses it before
    // any frame.
    let other = c.dir.path().join("other-ca");
    make_certs(&other, 3);
    let before = log_of(&c, 1).matches("TLS refused").count();
    let r = raw_hello(addr, 1, &ca, &other, "n2", "test", Sender::Peer(NodeId(2)));
    assert!(r.is_err(), "another CA's certificate got an answer: {r:?}");
    wait_log(&c, 1, "TLS refused", before + 1);
    // And a client of another CA cannot even read.
    let mut stranger = client_of(with_cert(&c.config, &other, "admin"), 1);
    stranger.timeout = Duration::from_secs(1);
    assert!(stranger.call(NodeId(1), RequestBody::Status).is_err());

    // A plaintext client against a TLS node: cut off, nothing answered.
    let mut plain = c.config.clone();
    plain.tls = None;
    let mut plain_client = client_of(plain, 1);
    let r = plain_client.call(NodeId(1), RequestBody::Status);
    assert!(r.is_err(), "a plaintext client was answered: {r:?}");
    wait_log(&c, 1, "TLS refused", before + 2);

    // None of that harmed the cluster: it commits, then loses its leader
    // and commits again under a new one.
    put(&mut client, "b", "2");
    c.wait_value_everywhere(&[1, 2, 3], "b", "2");
    c.kill(leader);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let new_leader = c.wait_leader(&rest);
    assert_ne!(new_leader, leader);
    let mut client = c.client();
    put(&mut client, "c", "3");
    c.wait_value_everywhere(&rest, "c", "3");
    c.start_node(leader);
    c.wait_value_everywhere(&[1, 2, 3], "c", "3");
}

/// Forwards connections from `listener` to `upstream`. The first
/// connection to carry 20 chunks from the dialer has its 20th sent with one
/// byte flipped; the next one has its 10th sent again after its 20th (a
/// replay). Later connections pass untouched.
fn tampering_proxy(listener: TcpListener, upstream: SocketAddr, stop: Arc<AtomicBool>) {
    let tampered = Arc::new(AtomicUsize::new(0));
    listener.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::Relaxed) {
        let (down, _) = match listener.accept() {
            Ok(x) => x,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = down.set_nonblocking(false);
        let Ok(up) = TcpStream::connect(upstream) else {
            continue;
        };
        let (d2, u2) = match (down.try_clone(), up.try_clone()) {
            (Ok(d), Ok(u)) => (d, u),
            _ => continue,
        };
        let stop1 = Arc::clone(&stop);
        let t = Arc::clone(&tampered);
        std::thread::spawn(move || copy(down, up, Some(t), stop1));
        let stop2 = Arc::clone(&stop);
        std::thread::spawn(move || copy(u2, d2, None, stop2));
    }
}

/// Copies `from` to `to`; with `tampered`, at chunk 20 the first such
/// copy flips a byte, the second replays chunk 10 after it.
fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    tampered: Option<Arc<AtomicUsize>>,
    stop: Arc<AtomicBool>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 << 10];
    let mut chunks = 0usize;
    let mut recorded: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => break,
        };
        chunks += 1;
        if chunks == 10 {
            recorded = buf[..n].to_vec();
        }
        let tamper = match &tampered {
            Some(t) if chunks == 20 => t.fetch_add(1, Ordering::Relaxed),
            _ => usize::MAX,
        };
        if tamper == 0 {
            buf[n / 2] ^= 0x01;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if tamper == 1 && to.write_all(&recorded).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn tls_proxy_flipping_or_replaying_peer_bytes_gets_the_link_cut() {
    let mut c = TestCluster::configure_tls(3);
    // n1 reaches n2 through the proxy: its own cluster.toml says so.
    let n2 = c.config.node(NodeId(2)).expect("n2").addr;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let proxy = listener.local_addr().expect("proxy addr");
    let text = std::fs::read_to_string(&c.config_path).expect("read config");
    let n1_config = c.dir.path().join("cluster-n1.toml");
    std::fs::write(
        &n1_config,
        text.replace(&n2.to_string(), &proxy.to_string()),
    )
    .expect("write n1 config");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_proxy = Arc::clone(&stop);
    let proxy_thread = std::thread::spawn(move || tampering_proxy(listener, n2, stop_proxy));
    c.start_node_with(1, &n1_config);
    c.start_node(2);
    c.start_node(3);
    c.wait_leader(&[1, 2, 3]);
    let mut client = c.client();
    put(&mut client, "k0", "v0");
    // n1 sends on its link to n2 only as leader or to a leader n2: make
    // sure one of them leads.
    let certs = c.dir.path().join("certs");
    let mut admin = client_of(with_cert(&c.config, &certs, "admin"), 3);
    for _ in 0..10 {
        if c.wait_leader(&[1, 2, 3]) != 3 {
            break;
        }
        let r = admin.call(NodeId(3), RequestBody::TransferLeader(NodeId(1)));
        eprintln!("transfer to n1: {r:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Two cuts: the flipped byte and the replayed chunk, each seen by n2's
    // TLS and ending that link (n1 dials again, through the proxy).
    wait_log(&c, 2, "TLS refused", 2);
    let refused: Vec<String> = log_of(&c, 2)
        .lines()
        .filter(|l| l.contains("TLS refused"))
        .map(str::to_string)
        .collect();
    eprintln!("n2 refused:\n{}", refused.join("\n"));
    // The cluster commits and every node holds what was written, with the
    // link through the proxy back.
    for i in 1..=5 {
        put(&mut client, &format!("k{i}"), &format!("v{i}"));
    }
    c.wait_value_everywhere(&[1, 2, 3], "k5", "v5");
    for id in 1..=3 {
        let mut r = client_of(c.config.clone(), id);
        for i in 0..=5 {
            let got = r.kv(
                Op::Get {
                    key: format!("k{i}").into(),
                },
                true,
            );
            let want = format!("v{i}").into_bytes();
            assert!(
                matches!(&got, Ok((_, OpResult::Value(Some(v)))) if *v == want),
                "n{id} k{i}: {got:?}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(c);
    let _ = proxy_thread.join();
}

/// Raises this process's open-files limit to the hard limit; returns it.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Writes through a client; the latency of each, in ms.
fn timed_puts(client: &mut Client, prefix: &str, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            put(client, &format!("{prefix}{i}"), "v");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn summary(ms: &mut [f64]) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, max {:.1} ms",
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    )
}

#[test]
fn tls_thousands_of_idle_and_slow_connections_do_not_stop_commits() {
    let limit = raise_fd_limit();
    let flood = 4000.min(limit.saturating_sub(200) as usize);
    let c = TestCluster::start_tls(3);
    let leader = c.wait_leader(&[1, 2, 3]);
    let mut client = c.client();
    put(&mut client, "warm", "up");
    let mut before = timed_puts(&mut client, "before", 20);
    let addr = c.config.node(NodeId(leader)).expect("leader").addr;
    // Half idle (not even a TLS ClientHello), half slow (a few bytes of
    // one, never finished).
    let mut held = Vec::with_capacity(flood);
    let mut refused = 0usize;
    for i in 0..flood {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                if i % 2 == 1 {
                    let _ = s.write_all(&[0x16, 0x03, 0x01]);
                }
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    let fds = open_fds(c.pid(leader));
    let mut during = timed_puts(&mut client, "during", 20);
    eprintln!(
        "{flood} connections opened ({refused} not accepted); leader holds {fds} fds; \
         put latency before: {}, during: {}",
        summary(&mut before),
        summary(&mut during)
    );
    assert!(
        fds < raftkit::node::PENDING_CONNECTIONS_MAX + 100,
        "the leader holds {fds} open files"
    );
    // The handshake deadline closes what is left of the flood.
    std::thread::sleep(raftkit::node::HANDSHAKE_DEADLINE + Duration::from_secs(1));
    let fds_after = open_fds(c.pid(leader));
    assert!(fds_after < 100, "{fds_after} fds after the deadline");
    drop(held);
    c.wait_value_everywhere(&[1, 2, 3], "during19", "v");
}
