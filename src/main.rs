//! The `portcullis` command: parse the command line, run it, print one line on error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match portcullis::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version: clap's own output, status 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A bad command line: clap explains it over several lines (usage, tips); the
        // contract is one line on standard error.
        Err(e) => {
            let text = e.to_string();
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let message = first.join(" ");
            eprintln!("portcullis: {} (see portcullis --help)", message.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match portcullis::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
