//! Connection upgrades: after a `101` the balancer relays raw bytes both ways.

mod common;

use common::*;
use std::time::Duration;

fn upgrade(c: &mut Conn) {
    c.send(
        b"GET /upgrade HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    );
    let resp = c.read_response();
    assert_eq!(resp.status, 101, "{resp:?}");
}

#[test]
fn upgraded_connection_relays_bytes_both_ways() {
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let mut c = balancer.connect();
    upgrade(&mut c);
    for i in 0..3 {
        let msg = format!("ping {i}");
        c.send(msg.as_bytes());
        let got = c.read_exact_n(msg.len());
        assert_eq!(String::from_utf8_lossy(&got), msg);
    }
    // Close our side: the backend sees EOF and closes, and so does the relay.
    c.shutdown_write();
    match c.wait_closed(Duration::from_secs(5)) {
        CloseState::Closed(extra) => assert!(extra.is_empty(), "{extra:?}"),
        CloseState::Open(_) => panic!("tunnel not closed after client EOF"),
    }
    // The balancer is still fine.
    let resp = http_get(balancer.port, "/");
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[test]
fn upgraded_connection_relays_bulk_data() {
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let mut c = balancer.connect();
    upgrade(&mut c);
    let data = pseudo_random_bytes(512 * 1024, 7);
    let writer = c.send_in_background(data.clone());
    let got = c.read_exact_n(data.len());
    writer.join().unwrap().expect("write tunnel data");
    assert_bytes_eq(&got, &data, "tunnelled 512 KiB");
}

#[test]
fn upgrade_headers_reach_the_backend_only_for_upgrades() {
    // A plain request carrying `Upgrade` without `Connection: upgrade` is not
    // an upgrade: it gets a normal response and the connection stays HTTP.
    let backend = spawn_backend();
    let balancer = spawn_balancer(&Config::for_backends(std::slice::from_ref(&backend)), &[]);
    let mut c = balancer.connect();
    let resp = c.request("GET", "/bytes/5", &[("Upgrade", "echo")], b"");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, b"abcde");
    let resp = c.get("/bytes/2");
    assert_eq!(resp.body, b"ab");
}
