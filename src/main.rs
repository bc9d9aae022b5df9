//! The `nftpol` binary: command-line parsing and the process edge. Everything it runs lives in
//! the library; this file only maps flags to options, sets up logging and turns errors into
//! messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use nftpol::cli::{self, Options};
use nftpol::core::compile::DEFAULT_TABLE;

#[derive(Parser)]
#[command(
    name = "nftpol",
    version,
    about = "Kubernetes NetworkPolicy enforcer: one nftables table per node, programmed atomically through netlink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a node's table as `nft -f` text, computed from Kubernetes objects in files.
    Render(FileArgs),
    /// Program a node's table into the current network namespace; sends only the difference
    /// to what the kernel holds.
    Apply {
        #[command(flatten)]
        files: FileArgs,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct FileArgs {
    /// The node whose table to compute (pods with this spec.nodeName are enforced).
    #[arg(long)]
    node: String,
    /// Files or directories with Kubernetes objects (YAML or JSON; repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Name of the inet table nftpol owns.
    #[arg(long, default_value = DEFAULT_TABLE, env = "NFTPOL_TABLE")]
    table: String,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args, Clone)]
struct LogArgs {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, default_value = "warn", env = "NFTPOL_LOG_LEVEL")]
    log_level: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "NFTPOL_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

impl FileArgs {
    fn options(&self) -> Options {
        Options {
            node: self.node.clone(),
            paths: self.files.clone(),
            table: self.table.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nftpol: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Render(files) => {
            init_logging(&files.log);
            let text = cli::render(&files.options())?;
            print!("{text}");
        }
        Command::Apply { files, json } => {
            init_logging(&files.log);
            let mut dp = nftpol::dataplane::Netlink::new()
                .context("cannot open a netlink socket to nf_tables (are you root?)")?;
            let summary = cli::apply(&files.options(), &mut dp)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{summary}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
