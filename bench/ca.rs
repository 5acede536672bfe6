//! The mesh CA's signing rate (issue 4: at least 1,000 workload
//! certificates per second): one CSR (P-256) signed for a SPIFFE ID, as
//! `/mesh/v1/join` and `/mesh/v1/renew` do, without the network and the
//! database write.
//!
//! Run: `cargo bench -p meshgate --bench ca`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meshgate::ca::{Ca, DEFAULT_TTL, SpiffeId};

fn signing(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let ca = runtime.block_on(async {
        let store = meshgate::store::open(&dir.path().join("meshgate.db")).await.expect("store");
        Ca::load(&store, dir.path(), "cluster.local", None).await.expect("CA")
    });
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("CSR").pem().expect("PEM");
    let id = SpiffeId::new("cluster.local", "default", "user-service").expect("id");
    c.bench_function("issue_workload_certificate", |b| {
        b.iter(|| black_box(ca.issue(black_box(csr.as_bytes()), &id, DEFAULT_TTL).expect("signed")))
    });
}

criterion_group!(benches, signing);
criterion_main!(benches);
