//! `lnat`: attach the NID-rewriting datapath, inspect it, change its mappings.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::{Parser as _, error::ErrorKind};
use lnat::verifier::Rejected;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ");
            eprintln!("lnat: error: {first} (see lnat --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Attach(args) => cmd::attach::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Map(args) => cmd::map::run(args),
        Command::Probe(args) => cmd::probe::run(args),
        Command::Completions(args) => cmd::docs::completions(&args),
        Command::Man(args) => cmd::docs::man(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lnat: error: {}", one_line(&e));
            if std::env::var_os("LNAT_DEBUG").is_some() {
                eprintln!("{e:?}");
                if let Some(rejected) = e.chain().find_map(|c| c.downcast_ref::<Rejected>()) {
                    eprintln!("\nverifier log:\n{}", rejected.log());
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// The error chain on one line: each cause up to its first line break (verifier logs run to
/// thousands of lines; `LNAT_DEBUG=1` prints them).
fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|c| c.to_string().lines().next().unwrap_or_default().to_owned())
        .collect();
    parts.join(": ")
}
