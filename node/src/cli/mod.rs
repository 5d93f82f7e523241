//! The command line: `taskmesh run` starts a node; `task …` and `settings …` talk to a node's
//! REST API.

mod client;
mod terminal;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::{ClientError, REFUSED, run_command};

/// Runs tasks across a mesh of equal machines: cron jobs, supervised daemons and manual tasks,
/// with a web UI on every node.
#[derive(Debug, Parser)]
#[command(name = "taskmesh", version, propagate_version = true)]
#[command(
    after_help = "Start a node with `taskmesh run` and open http://127.0.0.1:8080.\n\
Every other command talks to a node's API (--url, or TASKMESH_URL)."
)]
pub struct Cli {
    /// How to log to stderr: `text` for people and journald (colours only on a terminal, and
    /// not with NO_COLOR) or `json`, one object a line with each event's fields (a run's
    /// `run_id` and `task`). TASKMESH_LOG sets the filter (default: the node's own story at
    /// info; openraft's and libp2p's internals only when they fail).
    #[arg(
        long,
        global = true,
        env = "TASKMESH_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command prints what it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// The format of the log on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: scheduler, executor, web UI and API.
    Run(RunArgs),
    /// List, show, add, edit, run, enable, disable and remove tasks, and read their logs.
    #[command(subcommand)]
    Task(TaskCommand),
    /// List the runs of every live node, show one, print or follow its log, and stop it.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Export and import settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Cluster keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Notification channels.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Drain a node before maintenance, or end its drain.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Pause cron for the whole cluster, or resume it.
    #[command(subcommand)]
    Cron(CronCommand),
    /// The newest changes operators made through any node (UI, API or CLI), newest first.
    Activity {
        /// How many, 1 to 1000.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// The cluster at a glance: this node, the leader and term, the members, the live peers and
    /// what runs now.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a one-time link that logs a browser in to the node's UI (valid for 10 minutes).
    LoginUrl {
        #[command(flatten)]
        remote: Remote,
    },
    /// The node's access token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Install the node as a systemd service, or remove it (docs/service.md).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print a shell completion script: `taskmesh completions bash > /etc/bash_completion.d/taskmesh`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `taskmesh man > /usr/share/man/man1/taskmesh.1`.
    Man,
}

/// Writes what `completions` and `man` print; they need no node.
pub fn write_docs(command: &Command, out: &mut impl std::io::Write) -> std::io::Result<bool> {
    use clap::CommandFactory;
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "taskmesh", out);
            Ok(true)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(out)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Install the node as a systemd service: /etc/taskmesh/node.toml (an existing one is
    /// kept), the data dir (0700) with the node's identity and cluster key (0600), the unit
    /// /etc/systemd/system/taskmesh.service, then `systemctl daemon-reload` and `systemctl
    /// enable --now taskmesh`. Needs root, unless --root.
    Install(InstallArgs),
    /// Stop and disable the service and remove its unit. The data dir and the config stay,
    /// unless --purge.
    Uninstall(UninstallArgs),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Write into DIR as if it were / (packaging, tests); systemctl is not run then.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Write the files, but do not run `systemctl daemon-reload` and `systemctl enable --now`.
    #[arg(long)]
    pub no_start: bool,
    /// Run the node as the system user `taskmesh` (made when missing) instead of root. Its
    /// tasks run as that user too, and a task's own `user` cannot be another one.
    #[arg(long)]
    pub user: bool,
    /// Do not write the unit (the Debian package ships its own in /lib/systemd/system).
    #[arg(long)]
    pub no_unit: bool,
    /// Join a mesh: a file holding its cluster key (another node's DATA_DIR/cluster-key, or
    /// `taskmesh key gen`) [default: the key the data dir keeps, or a new one].
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// The binary the unit starts [default: this one].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Remove from DIR as if it were / (packaging, tests); systemctl is not run then.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Also delete the data dir (database, logs, keys) and /etc/taskmesh.
    #[arg(long)]
    pub purge: bool,
}

/// Runs `service install|uninstall`, saying what it does on stdout.
pub fn service(command: ServiceCommand) -> Result<(), crate::service::ServiceError> {
    let mut out = std::io::stdout().lock();
    match command {
        ServiceCommand::Install(args) => {
            let binary = match args.binary {
                Some(path) => path,
                None => std::env::current_exe().map_err(|source| {
                    crate::service::ServiceError::File {
                        action: "finding this binary's path (pass --binary PATH)",
                        path: PathBuf::from("/proc/self/exe"),
                        source,
                    }
                })?,
            };
            crate::service::install(
                &crate::service::InstallOptions {
                    root: args.root,
                    binary,
                    user: args.user,
                    unit: !args.no_unit,
                    start: !args.no_start,
                    cluster_key_file: args.cluster_key_file,
                },
                &mut out,
            )
        }
        ServiceCommand::Uninstall(args) => crate::service::uninstall(
            &crate::service::UninstallOptions {
                root: args.root,
                purge: args.purge,
            },
            &mut out,
        ),
    }
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Drain a node (by name or PeerId): no new run goes there, its always-tasks move to other
    /// nodes, and what runs there goes on to its end.
    Drain {
        /// The node's name or PeerId [default: the node the command talks to].
        node: Option<String>,
        /// Wait until nothing runs there any more.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// End a node's drain: it takes runs again.
    Undrain {
        /// The node's name or PeerId [default: the node the command talks to].
        node: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Pause cron: no cron slot fires and no @reboot task starts anywhere until it is resumed.
    /// Manual runs, retries, rules and always-tasks go on.
    Pause {
        #[command(flatten)]
        remote: Remote,
    },
    /// Resume cron: each task's catch-up policy decides what happens to the slots it missed.
    Resume {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Replace the access token (the node writes a new `<data dir>/access-token`); the old token
    /// and every browser session stop working at once.
    Rotate {
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a named access token for a person or a program; it works on every node of the
    /// cluster, and the activity names it. It is printed once: the cluster keeps only its hash.
    Add {
        /// Who or what will hold it: 1 to 64 letters, digits, '_', '.', '-' or '@'.
        name: String,
        /// It may read everything but secrets (the cluster key, exported secrets), and change
        /// nothing.
        #[arg(long)]
        read_only: bool,
        /// It stops working this long after it is made ("90d", "1y") [default: never].
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<crate::model::HumanDuration>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the named access tokens (names and rights, never the tokens).
    Ls {
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a named access token: it and the browser sessions it made stop working on every
    /// node.
    Rm {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test message to a channel of `cluster.channels`; fails with the receiver's answer.
    Test {
        /// The channel's name.
        channel: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random cluster key (give it to every node with --cluster-key-file, in
    /// TASKMESH_CLUSTER_KEY, or in the settings).
    Gen,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TOML file with data_dir, listen and name.
    #[arg(long, short, env = "TASKMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the database and logs live [default: ~/.local/share/taskmesh, /var/lib/taskmesh as root].
    #[arg(long, env = "TASKMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the web UI and API [default: 127.0.0.1:8080].
    #[arg(long, env = "TASKMESH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The node's name at its first start [default: the host name].
    #[arg(long, env = "TASKMESH_NAME")]
    pub name: Option<String>,
    /// Address of the p2p endpoint, a multiaddr [default: /ip4/0.0.0.0/tcp/7946].
    #[arg(long, env = "TASKMESH_P2P_LISTEN")]
    pub p2p_listen: Option<String>,
    /// A file (best 0600) holding the mesh's cluster key (64 hex digits, from `taskmesh key
    /// gen`); the node keeps it in DATA_DIR/cluster-key. TASKMESH_CLUSTER_KEY may hold the
    /// key itself instead [default: the key kept in the data dir, or a new one].
    #[arg(long, env = "TASKMESH_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Removed: a key on the command line is visible to every user (/proc/PID/cmdline). Kept
    /// only to say so.
    #[arg(long, hide = true, value_name = "KEY")]
    pub cluster_key: Option<String>,
    /// Do not use multicast DNS to find other nodes at this start (TASKMESH_NO_MDNS takes
    /// 1/0, true/false, yes/no, on/off).
    #[arg(long, env = "TASKMESH_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
    /// Another node's p2p address (host:port or multiaddr) to dial; repeatable.
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<String>,
    /// A host name the UI and API answer to (besides IP addresses, localhost, this machine's
    /// name and the host of cluster.notify.ui_url); repeatable. Other `Host`s get 421.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Serve the UI and API over TLS with a self-signed certificate made in the data directory
    /// (its SHA-256 fingerprint is logged at start).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls: bool,
    /// Serve the UI and API over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct Remote {
    /// The node to talk to.
    #[arg(
        long,
        global = true,
        env = "TASKMESH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The file holding the node's access token [default: access-token in the data directory; the
    /// TASKMESH_TOKEN environment variable, if set, is the token itself].
    #[arg(long, global = true, env = "TASKMESH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The node's data directory, where its access token is [default: ~/.local/share/taskmesh,
    /// /var/lib/taskmesh as root].
    #[arg(long, global = true, env = "TASKMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https:// node, besides the system's CAs and the
    /// node's own certificate (tls-cert.pem in the data directory).
    #[arg(long, global = true, env = "TASKMESH_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// How listings and `status` print: `text` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Where a client command finds the node's access token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// `TASKMESH_TOKEN`: the token itself.
    Given(String),
    /// A file: `--token-file`, or `<data dir>/access-token`.
    File(PathBuf),
}

impl Remote {
    /// The token source, by precedence: `--token-file`, `TASKMESH_TOKEN`, the data dir's file.
    pub fn token_source(&self, env_token: Option<String>) -> TokenSource {
        if let Some(path) = &self.token_file {
            return TokenSource::File(path.clone());
        }
        if let Some(token) = env_token.filter(|t| !t.trim().is_empty()) {
            return TokenSource::Given(token.trim().to_owned());
        }
        TokenSource::File(crate::config::Config::access_token_path_in(
            &self.node_data_dir(),
        ))
    }

    /// The node's data directory: `--data-dir`, or the default.
    pub fn node_data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::config::default_data_dir)
    }
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List tasks with their schedule and last run.
    Ls {
        /// Only the tasks with this label.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a task as JSON and its recent runs.
    Show {
        /// Task name or id.
        task: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add a task from flags or from a JSON file.
    Add(AddArgs),
    /// Replace a task with the JSON in a file, or edit it in $EDITOR.
    Edit {
        /// Task name or id.
        task: String,
        /// The new definition (as `task show --json` prints it); without it, $EDITOR opens.
        #[arg(long, short)]
        file: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Execute a task now; with --follow, print its log and exit with its exit code. Exits 3
    /// when the node refuses the run (no live node fulfils the task's dependencies, or its
    /// earlier run is still running under concurrency `forbid`): nothing was started.
    Run {
        /// Task name or id.
        task: String,
        #[arg(long, short)]
        follow: bool,
        /// A parameter for this run in place of the task's, as NAME=VALUE (repeat it for
        /// more); only the parameters the task declares.
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a task.
    Rm {
        /// Task name or id.
        task: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Enable a task: cron and Always start it again.
    Enable {
        /// Task name or id.
        task: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Disable a task: cron does not start it, and an always-task's daemon is stopped and not
    /// restarted; Execute now still runs it.
    Disable {
        /// Task name or id.
        task: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print every task as JSON, as `task apply` takes it back (to keep tasks in files, or to
    /// move them to another cluster).
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the cluster's tasks what a file says (a JSON list as `task export` writes, or one
    /// task), by name: create the new ones, change those that differ, leave the rest. The
    /// whole file is checked before anything changes.
    Apply {
        /// The file.
        file: PathBuf,
        /// Also remove the tasks the file does not name.
        #[arg(long)]
        prune: bool,
        /// Say what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the log of the task's newest run (an always-task's: its daemon's), from whichever
    /// node ran it; with --follow, as it grows, exiting with the run's exit code.
    Log {
        /// Task name or id.
        task: String,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs from every live node, newest first (nodes that do not answer are named on
    /// stderr).
    Ls {
        /// Only the runs of this task (name or id).
        #[arg(long)]
        task: Option<String>,
        /// Only runs with this status: queued, running, succeeded, failed, timed_out, killed,
        /// lost, skipped.
        #[arg(long)]
        status: Option<String>,
        /// Only runs on the node of this name.
        #[arg(long)]
        node: Option<String>,
        /// Only runs made by this trigger: manual, cron, reboot, always, retry, rule.
        #[arg(long)]
        trigger: Option<String>,
        /// How many, 1 to 1000.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a run as JSON.
    Show {
        /// The run's id.
        run: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a run's log, from whichever node ran it; with --follow, as it grows, exiting with
    /// the run's exit code.
    Log {
        /// The run's id.
        run: String,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a run wherever it runs (its task's stop signal, then SIGKILL after its grace time;
    /// a waiting run just ends). An always-task's daemon is started again: disable the task to
    /// keep it stopped.
    Stop {
        /// The run's id.
        run: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The task's name (not needed with --file).
    pub name: Option<String>,
    /// A whole task as JSON (see docs/tasks.md).
    #[arg(long, short, conflicts_with_all = ["shell", "argv", "cron", "always"])]
    pub file: Option<PathBuf>,
    /// A script for `sh -c`.
    #[arg(long, conflicts_with = "argv")]
    pub shell: Option<String>,
    /// Run on a crontab entry: "*/5 * * * *", "*/10 * * * * *", "@every 30s", "@reboot".
    #[arg(long, conflicts_with = "always")]
    pub cron: Option<String>,
    /// IANA timezone of --cron.
    #[arg(long, default_value = "UTC", requires = "cron")]
    pub timezone: String,
    /// Keep it running: start it now and restart it whenever it exits.
    #[arg(long)]
    pub always: bool,
    /// What the task is for.
    #[arg(long, conflicts_with = "file")]
    pub description: Option<String>,
    /// A label to group and find the task by, e.g. team=ops; repeatable.
    #[arg(long = "label", value_name = "LABEL", conflicts_with = "file")]
    pub labels: Vec<String>,
    /// The program and its arguments, after `--` (no shell).
    #[arg(last = true)]
    pub argv: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Write the settings as JSON to stdout or a file.
    Export {
        /// Include secrets (tokens, passwords) instead of masking them.
        #[arg(long)]
        secrets: bool,
        /// Write to this file instead of stdout.
        #[arg(short = 'o', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replace the settings with a JSON file (masked secrets keep their values).
    Import {
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}
