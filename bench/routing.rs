//! Routing cost against the number of routes (issue 3: matching against
//! 10,000 routes must cost at most 2x matching against 10). The matched
//! route is the last one, the worst case for a linear scan.
//!
//! Run: `cargo bench -p meshgate --bench routing`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meshgate::control::compile::Compiler;
use meshgate::proxy::upstream::HealthRegistry;

fn config(routes: usize) -> Vec<meshgate_model::Resource> {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec:\n  hosts: [api.example.com]\n  gateways: [gw]\n  http:\n",
    );
    for i in 0..routes {
        // A mix of exact and prefix routes, as real tables have.
        let kind = if i % 2 == 0 { "prefix" } else { "exact" };
        yaml.push_str(&format!(
            "  - match: [{{uri: {{{kind}: /service-{i}/v1}}}}]\n    route: [{{destination: {{host: svc-{i}}}}}]\n"
        ));
    }
    meshgate_model::decode("bench", &yaml, "default").expect("valid config")
}

fn routing(c: &mut Criterion) {
    let health = HealthRegistry::default();
    let mut group = c.benchmark_group("route_for");
    for n in [10usize, 100, 1_000, 10_000] {
        let resources = config(n);
        let snapshot = Compiler {
            cluster_domain: "svc.cluster.local",
            locality: "",
            health: &health,
            mesh: None,
            edge: None,
            workload: None,
        }
        .compile(1, &resources);
        let vhost = snapshot.ports[&80].find("api.example.com").expect("virtual host");
        // The last route: exact match for odd n-1, prefix match for even.
        let path = format!("/service-{}/v1", n - 1);
        let req = http::Request::get(path).header("host", "api.example.com").body(()).expect("request");
        assert!(vhost.route_for(&req, "http").is_some());
        group.bench_function(format!("{n}_routes"), |b| b.iter(|| black_box(vhost.route_for(black_box(&req), "http"))));
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
