#![forbid(unsafe_code)]

// The proxy allocates and frees small buffers on every request from several
// threads; mimalloc's per-thread heaps avoid glibc malloc's arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(meshgate::cli::main());
}
