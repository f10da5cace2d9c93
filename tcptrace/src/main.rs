use std::process::ExitCode;

use clap::{CommandFactory, Parser, error::ErrorKind};
use tcptrace::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = cli.trace.validate() {
        Cli::command().error(ErrorKind::ValueValidation, message).exit();
    }
    tcptrace::set_verbose(cli.trace.verbose);
    let result = match &cli.command {
        Some(Command::Replay(args)) => tcptrace::replay::run(args),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(tcptrace::live::run(&cli.trace, &cli.output))),
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
