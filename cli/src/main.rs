//! The `cairn` binary: see [`cairn_cli::cli`].

fn main() -> std::process::ExitCode {
    // Before any thread starts: glibc sizes its malloc arenas as threads first allocate.
    cairn_cli::allocator::limit_malloc_arenas();
    cairn_cli::cli::main()
}
