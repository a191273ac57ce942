//! The `portcullis` command: parse the command line, run it, print one line on error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = portcullis::cli::Cli::parse();
    match portcullis::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
