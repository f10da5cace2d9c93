use std::process::ExitCode;

use clap::{CommandFactory, Parser, error::ErrorKind};
use tcptrace::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = cli.trace.filter.validate() {
        Cli::command().error(ErrorKind::ValueValidation, message).exit();
    }
    tcptrace::set_verbose(cli.trace.verbose);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
    };
    let result = match &cli.command {
        Some(Command::Replay(args)) => tcptrace::replay::run(args),
        Some(Command::Lab(args)) => runtime().and_then(|r| r.block_on(tcptrace::lab::run(args))),
        Some(Command::Top(args)) => {
            if let Err(message) = args.filter.validate() {
                Cli::command().error(ErrorKind::ValueValidation, message).exit();
            }
            runtime().and_then(|r| r.block_on(tcptrace::top::run(args)))
        }
        Some(Command::LabPeer(args)) => tcptrace::lab::peer::run(args),
        None => runtime().and_then(|r| r.block_on(tcptrace::live::run(&cli.trace, &cli.output))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of standard output has seen enough (`tcptrace … | head`).
        Err(error) if tcptrace::sink::is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcptrace: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
