//! `votes`: the one binary of the appliance (docs/design.md §4.1). Everything it does is the
//! library's (`src/lib.rs`); the binary only chooses the allocator, which a library must not.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    votes::cli::main()
}
