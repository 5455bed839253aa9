//! The `trmctl` command, built inside the test package so that its tests run the real
//! command line (parsing, output, errors, exit codes) against running nodes.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    trmctl::cli::main()
}
