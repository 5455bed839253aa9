//! `trmctl`: the operator CLI of the TRM federation.
#![forbid(unsafe_code)]

/// The allocator: jemalloc, measured about a quarter less CPU per referral than glibc's
/// malloc (README, "Performance").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    trmctl::cli::main()
}
