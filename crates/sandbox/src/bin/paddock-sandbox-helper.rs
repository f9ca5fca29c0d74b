//! Standalone sandbox helper, for this crate's tests and for embedding setups where the server
//! binary cannot call `paddock_sandbox::helper::maybe_run` itself.

fn main() -> std::process::ExitCode {
    paddock_sandbox::helper::run()
}
