#![forbid(unsafe_code)]

fn main() {
    std::process::exit(meshgate::cli::main());
}
