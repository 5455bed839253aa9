//! `trm-node --config FILE`: runs one node until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    trm_node::cli::main()
}
