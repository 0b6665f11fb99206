fn main() -> std::process::ExitCode {
    // A shell asking for completions gets them and nothing else (see cli/complete.rs).
    cowctl::cli::complete_if_asked();
    let cli = cowctl::cli::parse();
    match cowctl::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One sentence: the context chain joined, outermost first.
            eprintln!("cowctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
