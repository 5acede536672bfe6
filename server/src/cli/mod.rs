//! The `meshgate` command line: `up` runs the server; every other verb is a
//! client of the REST API.

mod client;
mod commands;
mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::UpArgs;

#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about = "Edge API gateway, service mesh and control plane in one binary")]
pub struct Cli {
    /// Admin API of the meshgate server
    #[arg(long, global = true, env = "MESHGATE_SERVER", default_value = "http://127.0.0.1:15000")]
    pub server: String,
    /// API token [default: contents of ./meshgate-data/admin.token]
    #[arg(long, global = true, env = "MESHGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM roots for an https:// --server [default: ./meshgate-data/admin-ca.pem when it exists]
    #[arg(long, global = true, env = "MESHGATE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start meshgate: control plane, admin API and console
    Up(UpArgs),
    /// Create or update resources from YAML/JSON files, all or nothing
    Apply {
        /// A file, a folder of .yaml/.yml/.json files, or - for standard input
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace for documents that name none
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Check everything on the server, write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Show resources
    Get {
        /// Kind: gateway|gw, virtualservice|vs, destinationrule|dr, serviceentry|se, ...
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// All namespaces
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Label selector, e.g. app=web,version!=v1
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
    /// Delete resources by name or by the files that define them
    Delete {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
    },
    /// Every change: revision, time, who, what
    History {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
    /// Put the configuration back as it was right after REVISION (as a new revision)
    Rollback { revision: i64 },
    /// Every proxy (the gateway and each agent), the revision it runs, SYNCED or STALE
    ProxyStatus {
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
    /// What one proxy runs, as it reports it: routes, clusters, endpoints (live health) or its certificate
    ProxyConfig {
        #[arg(value_enum)]
        section: ConfigSection,
        /// `gateway`, or an agent's name as `proxy-status` lists it
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
    /// Access-log lines of the gateway and the sidecars, as JSON lines with the proxy's name
    Logs {
        /// Only this service's sidecars (`meshgate-gateway`: only the gateway)
        #[arg(long)]
        service: Option<String>,
        /// Keep following new lines until interrupted
        #[arg(short = 'f', long)]
        follow: bool,
        /// Without --follow: how long to gather lines from the proxies
        #[arg(long, default_value = "1s", value_name = "DURATION")]
        wait: String,
    },
    /// The mesh CA: show it, rotate its root, retire the old root
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// API keys of Consumers (for ApiKeyAuth)
    Apikey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Join tokens for agents
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run a sidecar agent: join the mesh and keep its certificate renewed
    Agent(crate::agent::AgentArgs),
    /// Find wrong references and unsupported fields, like istioctl analyze
    Analyze {
        /// Check these files as if applied, before applying them
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
}

/// `meshgate ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// The signing root, the roots trusted, and how far a rotation has got
    Show {
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
    /// Start a root rotation: a new root signs; the old stays trusted until retired
    Rotate,
    /// End a rotation: stop trusting the old root once every workload has renewed
    Retire {
        /// Retire even though certificates from the old root are still valid
        #[arg(long)]
        force: bool,
    },
}

/// `meshgate apikey ...`
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Make an API key for a Consumer; the key is printed once
    Create {
        #[arg(long)]
        consumer: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// List API keys (never the keys themselves)
    List {
        #[arg(long)]
        consumer: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
    /// Revoke an API key by its id
    Revoke { id: String },
}

/// `meshgate token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token an agent uses once to get its first certificate
    Create {
        /// The service the agent runs
        #[arg(long)]
        service: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The identity's service account [default: the service's name]
        #[arg(long)]
        service_account: Option<String>,
        /// How long the token can be used, e.g. 30m, 1h, 24h
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The token works for one join only
        #[arg(long)]
        single_use: bool,
    },
    /// List join tokens (never their secrets)
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
    /// Revoke a join token by its id
    Revoke { id: String },
}

/// Runs the CLI; the return value is the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => commands::up(args),
        Command::Agent(args) => crate::agent::main(args),
        command => client::Client::new(&cli.server, cli.token.as_deref(), cli.ca_file.as_deref())
            .and_then(|c| commands::run(&c, command)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ConfigSection {
    Routes,
    Clusters,
    Endpoints,
    Secret,
    All,
}
