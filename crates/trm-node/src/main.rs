//! `trm-node --config FILE`: runs one node until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

/// The allocator: jemalloc, measured about a quarter less CPU per referral than glibc's
/// malloc (README, "Performance").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    trm_node::cli::main()
}
