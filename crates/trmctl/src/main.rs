//! `trmctl`: the operator CLI of the TRM federation.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    trmctl::cli::main()
}
