//! The `portcullis` command: parse the command line, run it, print one line on error.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

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
            // clap's text strips every escape sequence, its own colours and any in the refused
            // argument alike, so `bo\e[2Jgus` would be shown as `bogus`. Rendered again
            // without colours, the argument keeps what was typed, for `printable` to escape.
            let plain = portcullis::cli::Cli::command().styles(clap::builder::Styles::plain()).try_get_matches();
            let text = match plain {
                Err(plain) => plain.render().ansi().to_string(),
                Ok(_) => e.to_string(),
            };
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let message = first.join(" ");
            // clap quotes the argument it refused, which may hold anything.
            let message = portcullis::text::printable(message.trim_start_matches("error: ")).into_owned();
            eprintln!("portcullis: {message} (see portcullis --help)");
            return ExitCode::from(2);
        }
    };
    match portcullis::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote names and values someone typed (or stored, before the rules were
            // tightened): escaped, so the line stays one line and shows what is there.
            let message = portcullis::text::error_chain(e.as_ref()).replace('\n', " ");
            eprintln!("portcullis: {}", portcullis::text::printable(&message));
            e.downcast_ref::<portcullis::cli::Failure>().map_or(ExitCode::FAILURE, |f| ExitCode::from(f.status))
        }
    }
}
