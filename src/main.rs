use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cowctl::cli::Cli::parse();
    match cowctl::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One sentence: the context chain joined, outermost first.
            eprintln!("cowctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
