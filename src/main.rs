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
    /// Install the CNI plugin on the host (init container): copy the static plugin binary into
    /// the CNI bin dir as `nftpol` and chain it into the CNI config, idempotently.
    InstallCni(InstallCniArgs),
}

#[derive(Args)]
struct InstallCniArgs {
    /// The static plugin binary to copy.
    #[arg(long, default_value = nftpol_cni::install::DEFAULT_SOURCE_BINARY)]
    plugin_binary: PathBuf,
    /// The host's CNI bin dir (the plugin is installed there as `nftpol`).
    #[arg(long, default_value = nftpol_cni::install::DEFAULT_BIN_DIR)]
    cni_bin_dir: PathBuf,
    /// The host's CNI config dir.
    #[arg(long, default_value = nftpol_cni::install::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// The config file to chain into (default: the one the runtime loads, as libcni picks it).
    #[arg(long)]
    conflist: Option<String>,
    /// The agent's socket, written into the plugin's config.
    #[arg(long, default_value = nftpol_cni::protocol::DEFAULT_SOCKET, env = "NFTPOL_SOCKET")]
    socket: PathBuf,
    /// How long the plugin waits for the agent on ADD.
    #[arg(long, default_value_t = nftpol_cni::install::DEFAULT_TIMEOUT_SECONDS)]
    timeout_seconds: u64,
    /// Do not copy the binary (only edit the config).
    #[arg(long)]
    skip_binary: bool,
    /// Remove the plugin from the config again (restoring the original file when unchanged).
    #[arg(long)]
    uninstall: bool,
    /// With --uninstall: also delete the plugin binary.
    #[arg(long, requires = "uninstall")]
    remove_binary: bool,
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
    // Invoked by a container runtime as a CNI plugin: the protocol owns stdin and stdout.
    if std::env::var_os("CNI_COMMAND").is_some() {
        let code = nftpol_cni::plugin::run();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
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
        Command::InstallCni(args) => {
            let opts = nftpol_cni::install::InstallOptions {
                source_binary: args.plugin_binary,
                bin_dir: args.cni_bin_dir,
                conf_dir: args.cni_conf_dir,
                conflist: args.conflist,
                socket: args.socket,
                timeout_seconds: args.timeout_seconds,
                skip_binary: args.skip_binary,
                uninstall: args.uninstall,
                remove_binary: args.remove_binary,
            };
            let report = nftpol_cni::install::execute(&opts)?;
            print!("{report}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
