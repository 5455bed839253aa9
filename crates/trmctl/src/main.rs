//! `trmctl`: the operator CLI of the TRM federation.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    trmctl::cli::main_with(std::env::args_os())
}
