//! `portcullis`: the agent binary. Thin: parse arguments, call the library, map errors to
//! exit codes.

fn main() -> anyhow::Result<()> {
    eprintln!("portcullis: the agent daemon and CLI are not built yet; see README.md");
    std::process::exit(2)
}
