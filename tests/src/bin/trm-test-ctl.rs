//! The `trmctl` command, built inside the test package so that its tests run the real
//! command line (parsing, output, exit codes) against running nodes.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    trmctl::cli::main_with(std::env::args_os())
}
