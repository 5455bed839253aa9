//! The `trm-node` command, built inside the test package so that its tests can run a node
//! as a real process (and kill it): the same entry point as the shipped binary.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    trm_node::cli::main()
}
