//! The `cairn` binary: see [`cairn_cli::cli`].

fn main() -> std::process::ExitCode {
    cairn_cli::cli::main()
}
