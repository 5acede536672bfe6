//! The mesh across hosts: the control plane on the test's side of a lab
//! network, each agent and its app on a host (network namespace) of its
//! own, so every mTLS hop crosses interfaces.

use std::path::Path;

use crate::lab::Lab;
use crate::mesh::{Agent, USER_SERVICE, agent_command, field, token, wait_synced};
use crate::support::{BIN, Server};

/// `user-service` at `version` on lab host `h` in `locality`: its app (which
/// answers `VERSION@hostH`) and its agent, on Istio's default ports.
fn user_service_host(lab: &mut Lab, server: &Server, dir: &Path, h: usize, version: &str, locality: &str) -> Agent {
    lab.app(h, &format!("{version}@host{h}"), "127.0.0.1:9001");
    let t = token(server, &["--service", "user-service"]);
    let args = [
        "--token",
        &t,
        "--service",
        "user-service",
        "--ca-fingerprint",
        &server.ca_fingerprint,
        "--app",
        "127.0.0.1:9001",
        "--version",
        version,
        "--locality",
        locality,
        "--inbound",
        "0.0.0.0:15006",
        "--outbound",
        "127.0.0.1:15001",
    ];
    let mut agent = Agent::spawn(agent_command(lab.command(h, BIN), &server.mesh, dir, &args));
    let ready = agent.wait_for("meshgate agent ready ");
    // It registered the address other hosts reach it at.
    assert_eq!(field(&ready, "address="), lab.addr(h), "{ready}");
    agent
}

const DESTINATION_RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: user-service}\nspec:\n  host: user-service\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 300ms}}\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 100}\n    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

#[test]
fn a_canary_splits_across_hosts_and_a_lost_host_fails_over_to_the_next_locality() {
    let Some(mut lab) = Lab::new(3) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--mesh", &format!("{}:0", lab.gateway_addr())]);
    server.apply(USER_SERVICE);
    // Host 1: user-service v1 in us-east; host 2: v2 in us-west.
    let _east = user_service_host(&mut lab, &server, &tmp.path().join("east"), 1, "v1", "us-east/zone-a");
    let _west = user_service_host(&mut lab, &server, &tmp.path().join("west"), 2, "v2", "us-west/zone-a");
    // Host 0: the caller (orders, in us-east), its outbound port open to the test.
    let outbound = format!("{}:15001", lab.addr(0));
    let t = token(&server, &["--service", "orders"]);
    let args = [
        "--token",
        &t,
        "--service",
        "orders",
        "--ca-fingerprint",
        &server.ca_fingerprint,
        "--locality",
        "us-east/zone-a",
        "--outbound",
        &outbound,
        "--inbound",
        "0.0.0.0:15006",
    ];
    let mut orders = Agent::spawn(agent_command(lab.command(0, BIN), &server.mesh, &tmp.path().join("orders"), &args));
    let orders_name = field(&orders.wait_for("meshgate agent ready "), "name=").to_string();

    let c = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(30)).build().unwrap();
    let call = || {
        let r = c.get(format!("http://{outbound}/users")).header("host", "user-service").send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };

    // A canary: 80/20 by version, across the two hosts.
    server.apply(&format!(
        "{DESTINATION_RULE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: user-service}}\nspec:\n  hosts: [user-service]\n  http:\n  - route:\n    - {{destination: {{host: user-service, subset: v1}}, weight: 80}}\n    - {{destination: {{host: user-service, subset: v2}}, weight: 20}}\n"
    ));
    wait_synced(&server, 3);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let (status, body) = call();
        assert_eq!(status, 200, "{body}");
        *counts.entry(body).or_insert(0) += 1;
    }
    let v2 = counts.get("v2@host2").copied().unwrap_or(0);
    assert_eq!(counts.get("v1@host1").copied().unwrap_or(0) + v2, 200, "{counts:?}");
    // 20% of 200 is 40; a binomial count outside 15..=70 is a one-in-a-million event.
    assert!((15..=70).contains(&v2), "the 20% canary got {v2} of 200: {counts:?}");

    // Failover: with locality preference the caller in us-east uses us-east only...
    server.apply("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: user-service}\nspec:\n  hosts: [user-service]\n  http:\n  - route: [{destination: {host: user-service}}]\n    retries: {attempts: 3, perTryTimeout: 1s, retryOn: 'connect-failure,reset,gateway-error'}\n");
    wait_synced(&server, 3);
    for _ in 0..20 {
        assert_eq!(call(), (200, "v1@host1".to_string()));
    }
    // ...until us-east's host drops off the network: its instance is ejected
    // and the next locality, us-west, takes every call; none is lost.
    lab.unplug(1);
    for i in 0..20 {
        assert_eq!(call(), (200, "v2@host2".to_string()), "call {i} after host 1 went down");
    }
    // The caller's sidecar says so itself: host 1's endpoint is ejected, host 2's healthy.
    let endpoints = server.ok(&["proxy-config", "endpoints", &orders_name]);
    let row = |host: usize| {
        let address = format!("{}:15006", lab.addr(host));
        endpoints
            .lines()
            .find(|l| l.starts_with(&address))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    };
    assert_eq!(row(1).as_deref(), Some("EJECTED"), "{endpoints}");
    assert_eq!(row(2).as_deref(), Some("HEALTHY"), "{endpoints}");
}
