//! Load-balancing strategies: which backend serves each request.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;

/// Ports (from the `backend PORT` body) of `n` `GET /` on one connection.
fn ports_on_one_connection(balancer: &Balancer, n: usize) -> Vec<u16> {
    let mut c = balancer.connect();
    (0..n)
        .map(|i| {
            let resp = c.get("/");
            assert_eq!(resp.status, 200, "request {i}: {resp:?}");
            let port = root_body_port(&resp);
            assert_eq!(port, resp.backend_port());
            port
        })
        .collect()
}

/// Ports of `n` `GET /`, each on a new connection.
fn ports_on_new_connections(balancer: &Balancer, n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let resp = http_get(balancer.port, "/");
            assert_eq!(resp.status, 200, "request {i}: {resp:?}");
            root_body_port(&resp)
        })
        .collect()
}

fn ports(backends: &[Backend]) -> Vec<u16> {
    backends.iter().map(|b| b.port).collect()
}

#[test]
fn round_robin_rotates_exactly_with_one_worker() {
    let backends = spawn_backends(3);
    let balancer = spawn_balancer(&Config::for_backends(&backends), &["--workers", "1"]);
    let seq = ports_on_one_connection(&balancer, 30);
    let counts = count(&seq);
    for b in &backends {
        assert_eq!(counts.get(&b.port), Some(&10), "sequence {seq:?}");
    }
    let first: HashSet<u16> = seq[..3].iter().copied().collect();
    assert_eq!(first.len(), 3, "first three not distinct: {seq:?}");
    for (i, p) in seq.iter().enumerate() {
        assert_eq!(*p, seq[i % 3], "not a rotation at {i}: {seq:?}");
    }
}

#[test]
fn round_robin_is_fair_with_two_workers_and_new_connections() {
    let backends = spawn_backends(3);
    let balancer = spawn_balancer(&Config::for_backends(&backends), &["--workers", "2"]);
    let seq = ports_on_new_connections(&balancer, 60);
    let counts = count(&seq);
    for b in &backends {
        let n = counts.get(&b.port).copied().unwrap_or(0);
        assert!(n >= 12, "backend {} got {n} of 60: {counts:?}", b.port);
    }
}

/// Two backends of weights 1 and 2 under `strategy`, one worker: the
/// backends and the ports of 30 requests on one connection.
fn picks_with_weights_1_2(strategy: &str) -> (Vec<Backend>, Vec<u16>) {
    let backends = spawn_backends(2);
    let servers = format!(
        "[{{ address = \"127.0.0.1:{}\", weight = 1 }}, {{ address = \"127.0.0.1:{}\", weight = 2 }}]",
        backends[0].port, backends[1].port
    );
    let config = Config::for_backends(&backends)
        .with("servers", &servers)
        .strategy(strategy)
        .with("workers", "1");
    let balancer = spawn_balancer(&config, &[]);
    let seq = ports_on_one_connection(&balancer, 30);
    (backends, seq)
}

#[test]
fn weighted_round_robin_follows_weights_exactly() {
    let (backends, seq) = picks_with_weights_1_2("WeightedRoundRobin");
    let counts = count(&seq);
    assert_eq!(counts.get(&backends[0].port), Some(&10), "{seq:?}");
    assert_eq!(counts.get(&backends[1].port), Some(&20), "{seq:?}");
    // Within every window of 3 consecutive picks the ratio holds too.
    for (w, window) in seq.chunks(3).enumerate() {
        let light = window.iter().filter(|p| **p == backends[0].port).count();
        assert_eq!(light, 1, "window {w} of {seq:?}");
    }
}

#[test]
fn round_robin_honours_weights() {
    // nginx's and HAProxy's round robin weigh servers; so does ours (it
    // used to rotate strictly and ignore weights: 1:2 came out 15:15).
    let (backends, seq) = picks_with_weights_1_2("RoundRobin");
    let counts = count(&seq);
    assert_eq!(counts.get(&backends[0].port), Some(&10), "{seq:?}");
    assert_eq!(counts.get(&backends[1].port), Some(&20), "{seq:?}");
}

#[test]
fn weighted_servers_mix_strings_and_tables() {
    let backends = spawn_backends(2);
    let servers = format!(
        "[\"127.0.0.1:{}\", {{ address = \"127.0.0.1:{}\", weight = 3 }}]",
        backends[0].port, backends[1].port
    );
    let config = Config::for_backends(&backends)
        .with("servers", &servers)
        .strategy("WeightedRoundRobin")
        .with("workers", "1");
    let balancer = spawn_balancer(&config, &[]);
    let seq = ports_on_one_connection(&balancer, 40);
    let counts = count(&seq);
    // A plain string server has weight 1.
    assert_eq!(counts.get(&backends[0].port), Some(&10), "{seq:?}");
    assert_eq!(counts.get(&backends[1].port), Some(&30), "{seq:?}");
}

#[test]
fn ip_hash_is_sticky_and_survives_removing_another_backend() {
    let backends = spawn_backends(3);
    let all = ports(&backends);
    let balancer = spawn_balancer(&Config::new(&all).strategy("IpHash"), &[]);
    let seq = ports_on_new_connections(&balancer, 12);
    let chosen = seq[0];
    assert!(
        seq.iter().all(|p| *p == chosen),
        "127.0.0.1 spread over backends: {seq:?}"
    );
    drop(balancer);
    // Dropping any other backend from the list keeps 127.0.0.1's backend.
    for removed in all.iter().copied().filter(|p| *p != chosen) {
        let reduced: Vec<u16> = all.iter().copied().filter(|p| *p != removed).collect();
        let balancer = spawn_balancer(&Config::new(&reduced).strategy("IpHash"), &[]);
        let seq = ports_on_new_connections(&balancer, 6);
        assert!(
            seq.iter().all(|p| *p == chosen),
            "after removing {removed} from {all:?}, 127.0.0.1 moved from {chosen}: {seq:?}"
        );
    }
}

#[test]
fn random_uses_every_backend() {
    let backends = spawn_backends(3);
    let config = Config::for_backends(&backends).strategy("Random");
    let balancer = spawn_balancer(&config, &[]);
    let seq = ports_on_one_connection(&balancer, 60);
    let used: HashSet<u16> = seq.iter().copied().collect();
    assert_eq!(
        used,
        ports(&backends).into_iter().collect(),
        "{:?}",
        count(&seq)
    );
}

#[test]
fn power_of_two_choices_uses_every_backend() {
    let backends = spawn_backends(3);
    let config = Config::for_backends(&backends).strategy("PowerOfTwoChoices");
    let balancer = spawn_balancer(&config, &[]);
    let seq = ports_on_new_connections(&balancer, 60);
    let used: HashSet<u16> = seq.iter().copied().collect();
    assert_eq!(
        used,
        ports(&backends).into_iter().collect(),
        "{:?}",
        count(&seq)
    );
}

#[test]
fn least_connections_avoids_the_busy_backend() {
    let backends = spawn_backends(3);
    // Taps tell which backend received the slow request as soon as it is
    // forwarded, so the quick requests start only once it is in flight.
    let taps: Vec<Tap> = backends
        .iter()
        .map(|b| Tap::start(b.port, b"/sleep"))
        .collect();
    let tap_ports: Vec<u16> = taps.iter().map(|t| t.port).collect();
    let config = Config::new(&tap_ports)
        .strategy("LeastConnections")
        .with("workers", "1");
    let balancer = spawn_balancer(&config, &[]);

    let mut slow = balancer.connect();
    slow.send(&build_request("GET", "/sleep?ms=1500", &[], b""));
    let busy = poll_until(Duration::from_secs(10), || {
        taps.iter().find(|t| t.hits() > 0).map(|t| t.backend_port)
    })
    .expect("the /sleep request never reached a backend");

    let mut quick = Vec::new();
    for _ in 0..6 {
        let resp = http_get(balancer.port, "/");
        assert_eq!(resp.status, 200, "{resp:?}");
        quick.push(root_body_port(&resp));
    }
    let resp = slow.read_response();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.backend_port(), busy);
    assert!(
        !quick.contains(&busy),
        "quick requests went to the busy backend {busy}: {quick:?}"
    );
}

#[test]
fn dead_backend_is_taken_out_of_rotation() {
    let backends = spawn_backends(2);
    let dead = closed_port();
    let config = Config::new(&[backends[0].port, dead, backends[1].port])
        .with("workers", "1")
        .with("max_fails", "1")
        .with("fail_window", "10")
        .with("health_check_interval", "100");
    let balancer = spawn_balancer(&config, &[]);
    // Wait until the health checker (or passive failure counting) has
    // marked the dead backend down: 10 successes in a row.
    let mut streak = 0;
    let ok = poll_until(Duration::from_secs(10), || {
        let resp = http_get(balancer.port, "/");
        if resp.status == 200 {
            streak += 1;
        } else {
            streak = 0;
        }
        (streak >= 10).then_some(())
    });
    assert!(ok.is_some(), "requests kept failing with a dead backend");
    let seq = ports_on_one_connection(&balancer, 20);
    let counts = count(&seq);
    for b in &backends {
        let n = counts.get(&b.port).copied().unwrap_or(0);
        assert!(n >= 8, "live backend {} got {n} of 20: {seq:?}", b.port);
    }
}
