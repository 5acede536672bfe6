#![forbid(unsafe_code)]

// Per-request buffers and futures of a few KiB are freed on another worker
// thread as often as not; mimalloc handles that without the arena-lock
// contention and consolidation glibc's malloc showed in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(meshgate::cli::main());
}
