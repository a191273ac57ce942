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
            let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            if let Some(help) = portcullis::cli::help_asked_of_help(&e, &args) {
                let _ = help.print();
                return ExitCode::SUCCESS;
            }
            // A stray database URL (`store copy postgres://…` without `--to`) is quoted with
            // its password hidden.
            let message = portcullis::cli::usage_error(&e, &args);
            eprintln!("portcullis: {}", portcullis::postgres::url::redact_words(&message));
            return ExitCode::from(2);
        }
    };
    match portcullis::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote names and values someone typed (or stored, before the rules were
            // tightened), most of them escaped already: what is left is escaped, newlines too,
            // so the line stays one line and shows what is there.
            let message = portcullis::text::error_chain(e.as_ref());
            let message = portcullis::postgres::url::redact_words(&message);
            eprintln!("portcullis: {}", portcullis::text::escape_hidden(&message));
            e.downcast_ref::<portcullis::cli::Failure>().map_or(ExitCode::FAILURE, |f| ExitCode::from(f.status))
        }
    }
}
