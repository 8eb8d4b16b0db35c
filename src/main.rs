//! The `cairn` binary: see [`cairn::cli`].

fn main() -> std::process::ExitCode {
    cairn::cli::main()
}
