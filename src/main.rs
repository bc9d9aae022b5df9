//! The `nftpol` binary: command-line parsing and the process edge. Everything it runs lives in
//! the library; this file only maps flags to options, sets up logging and turns errors into
//! messages and exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use nftpol::agent::{self, AgentConfig, engine::KernelWatch, parse_duration, telemetry};
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
    /// Run the node agent: watch the cluster, keep this node's table programmed, serve the
    /// CNI plugin. Runs until SIGTERM or SIGINT and leaves the table in place on exit.
    Agent(Box<AgentArgs>),
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
struct AgentArgs {
    /// The node this agent enforces (pods with this spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Kubeconfig file(s), `:`-separated; default: in-cluster config, then ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Name of the inet table nftpol owns.
    #[arg(long, default_value = DEFAULT_TABLE, env = "NFTPOL_TABLE")]
    table: String,
    /// Unix socket the CNI plugin connects to.
    #[arg(long, default_value = "/run/nftpol/nftpol.sock", env = "NFTPOL_SOCKET")]
    socket: PathBuf,
    /// Directory for the attachment list and the bound metrics address.
    #[arg(long, default_value = "/run/nftpol", env = "NFTPOL_STATE_DIR")]
    state_dir: PathBuf,
    /// Address of /metrics, /healthz and /readyz (port 0: any free port, written to
    /// <state-dir>/metrics-addr).
    #[arg(long, default_value = "0.0.0.0:9464", env = "NFTPOL_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Log level or tracing filter (changeable at runtime: PUT /loglevel from localhost).
    #[arg(long, default_value = "info", env = "NFTPOL_LOG_LEVEL")]
    log_level: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "NFTPOL_LOG_FORMAT")]
    log_format: LogFormat,
    /// Period of the full reconcile against the kernel (Go-style duration).
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "NFTPOL_RESYNC_INTERVAL")]
    resync_interval: Duration,
    /// Quiet time after a change before the table is synced.
    #[arg(long, default_value = "20ms", value_parser = parse_duration, env = "NFTPOL_DEBOUNCE")]
    debounce: Duration,
    /// Longest a change waits while changes keep coming.
    #[arg(long, default_value = "250ms", value_parser = parse_duration, env = "NFTPOL_DEBOUNCE_MAX")]
    debounce_max: Duration,
    /// How to notice changes others make to the table.
    #[arg(long, value_enum, default_value_t = KernelWatchArg::Notify, env = "NFTPOL_KERNEL_WATCH")]
    kernel_watch: KernelWatchArg,
    /// Dump-and-compare period when polling (--kernel-watch=poll, or notifications unavailable).
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "NFTPOL_KERNEL_POLL_INTERVAL")]
    kernel_poll_interval: Duration,
    /// How long a CNI ADD waits for the agent to become ready before answering "try again".
    #[arg(long, default_value = "8s", value_parser = parse_duration, env = "NFTPOL_CNI_READY_TIMEOUT")]
    cni_ready_timeout: Duration,
    /// Timeout of the API GET for a pod the watch has not delivered yet (CNI ADD).
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "NFTPOL_API_TIMEOUT")]
    api_timeout: Duration,
    /// The host's CNI config dir as mounted into the agent: when set, the agent keeps the
    /// plugin chained there (the primary CNI may rewrite its config, as flannel does).
    #[arg(long, env = "NFTPOL_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// The config file to keep the plugin in (default: the one the runtime loads).
    #[arg(long, env = "NFTPOL_CNI_CONFLIST", requires = "cni_conf_dir")]
    cni_conflist: Option<String>,
    /// `timeoutSeconds` of the plugin entry (as install-cni writes it).
    #[arg(long, default_value_t = nftpol_cni::install::DEFAULT_TIMEOUT_SECONDS)]
    cni_timeout_seconds: u64,
    /// How often the CNI config is checked.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "NFTPOL_CNI_CHECK_INTERVAL")]
    cni_check_interval: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelWatchArg {
    /// nf_tables netlink notifications (falls back to polling).
    Notify,
    /// Dump and compare every --kernel-poll-interval.
    Poll,
    /// Only the periodic resync.
    Off,
}

impl AgentArgs {
    fn config(&self) -> AgentConfig {
        let mut c = AgentConfig::new(self.node_name.clone(), self.state_dir.clone());
        c.kubeconfig = self
            .kubeconfig
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        c.table = self.table.clone();
        c.socket = self.socket.clone();
        c.metrics_addr = self.metrics_addr;
        c.resync_interval = self.resync_interval;
        c.debounce = self.debounce;
        c.debounce_max = self.debounce_max;
        c.kernel_watch = match self.kernel_watch {
            KernelWatchArg::Notify => KernelWatch::Notify,
            KernelWatchArg::Poll => KernelWatch::Poll,
            KernelWatchArg::Off => KernelWatch::Off,
        };
        c.kernel_poll_interval = self.kernel_poll_interval;
        c.cni_ready_timeout = self.cni_ready_timeout;
        c.api_timeout = self.api_timeout;
        c.cni_config =
            self.cni_conf_dir
                .clone()
                .map(|conf_dir| nftpol::agent::cni_config::CniConfigGuard {
                    conf_dir,
                    conflist: self.cni_conflist.clone(),
                    socket: self.socket.clone(),
                    timeout_seconds: self.cni_timeout_seconds,
                    interval: self.cni_check_interval,
                });
        c
    }
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
        Command::Agent(args) => run_agent(&args)?,
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

fn run_agent(args: &AgentArgs) -> anyhow::Result<()> {
    let format = match args.log_format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    let log = telemetry::init(&args.log_level, format)?;
    let config = args.config();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nftpol-worker")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        };
        agent::run(config, Some(log), shutdown).await?;
        anyhow::Ok(())
    })
}
