//! The `edgegate` command line: `run`, `check` and `demo`. Everything else lives in the library.

use clap::{Parser, Subcommand};
use edgegate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc (default) or jemalloc: Pingora's many short-lived per-request allocations cost
/// measurably less with either than with glibc malloc (Cargo.toml's features, and
/// docs/BENCHMARKS.md).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
mod allocator;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;

/// sysexits' EX_USAGE: the configuration is wrong.
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "edgegate",
    version,
    about = "Edge gateway for cloud-development workspaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listeners of a running edgegate (Pingora graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a configuration file and exit.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show how a request would be routed and authorised, without proxying it. Exit status 0
    /// when it would reach a reachable upstream, 1 otherwise.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        /// The request URL, e.g. http://ws-01hz….example.com/agent/ws
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// A Cookie header value, e.g. "session=…".
        #[arg(long)]
        cookie: Option<String>,
        /// A token, sent as `Authorization: Bearer`.
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        origin: Option<String>,
        /// Ask as a WebSocket upgrade (implied by ws:// and wss:// URLs).
        #[arg(long)]
        upgrade: bool,
    },
    /// Tokens, for operators and tests.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run a self-contained demo: built-in routes, a built-in upstream, no Redis.
    Demo {
        /// Address of the demo gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a freshly minted token signed with the configured key.
    Mint {
        #[arg(short, long)]
        config: PathBuf,
        /// `dev-ide` or `terminal`.
        #[arg(long = "type")]
        typ: String,
        /// The workspace id the token is scoped to.
        #[arg(long)]
        id: String,
        /// The user (`sub`); must be the record's owner to be accepted.
        #[arg(long)]
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let built = Config::load(&config).and_then(|c| {
                edgegate::runtime::Runtime::build(&c)
                    .map_err(|e| Config::locate_in_file(&config, e))
            });
            match built {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(&e),
            }
        }
        Command::Run {
            config: path,
            upgrade,
        } => {
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            edgegate::logging::init(&config.log.level, config.log.format);
            let opt = pingora::server::configuration::Opt {
                upgrade,
                ..Default::default()
            };
            run(&config, Some(opt), Some(path))
        }
        Command::Token {
            command:
                TokenCommand::Mint {
                    config,
                    typ,
                    id,
                    user,
                },
        } => mint(&config, &typ, &id, &user),
        Command::Explain {
            config,
            url,
            method,
            cookie,
            token,
            origin,
            upgrade,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let question = edgegate::explain::Question {
                url,
                method,
                cookie,
                token,
                origin,
                upgrade,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("edgegate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(edgegate::explain::explain(&config, &question)) {
                Ok(answer) => {
                    print!("{}", answer.report);
                    if answer.proxied {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => usage_error(&e),
            }
        }
        Command::Demo { listen } => demo(&listen),
    }
}

fn mint(config: &std::path::Path, typ: &str, id: &str, user: &str) -> ExitCode {
    use edgegate::auth::token::{TokenKeys, TokenType};
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(typ) = TokenType::parse(typ).filter(|t| *t != TokenType::IdeSession) else {
        return usage_error(&"--type: must be dev-ide or terminal");
    };
    let Some(id) = edgegate::route::WorkspaceId::parse(id) else {
        return usage_error(&"--id: not a valid workspace id (26-character ULID)");
    };
    if user.is_empty() {
        return usage_error(&"--user: must not be empty");
    }
    let keys = match TokenKeys::from_config(&config.auth.tokens, config.auth.ide_cookie_ttl_secs) {
        Ok(k) => k,
        Err(e) => return usage_error(&e),
    };
    match keys.mint(typ, &id, user) {
        Ok((token, _)) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgegate: cannot mint: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Load and validate a config file, or the exit status for why not.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| usage_error(&e))
}

fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("edgegate: {e}");
    ExitCode::from(EX_USAGE)
}

fn run(
    config: &Config,
    opt: Option<pingora::server::configuration::Opt>,
    path: Option<std::path::PathBuf>,
) -> ExitCode {
    match edgegate::build_server(config, opt) {
        Ok(server) => server.run_forever(path),
        Err(e) => {
            eprintln!("edgegate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The demo's upstream address, named in `conf/demo.toml`.
const DEMO_UPSTREAM: &str = "127.0.0.1:18081";

fn demo(listen: &str) -> ExitCode {
    // A fresh token secret per demo run (set before any thread starts).
    let mut secret = [0u8; 32];
    if getrandom::fill(&mut secret).is_err() {
        eprintln!("edgegate demo: no OS randomness for a token secret");
        return ExitCode::FAILURE;
    }
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::env::set_var("EDGEGATE_DEMO_SECRET", hex);
    let mut config = match Config::parse(include_str!("../conf/demo.toml")) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    config.listen.http = vec![listen.to_string()];
    if let Err(e) = config.validate() {
        return usage_error(&e);
    }
    edgegate::logging::init(&config.log.level, config.log.format);
    // The built-in upstream runs on a runtime of its own for the life of the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let addr = DEMO_UPSTREAM.parse().expect("constant address");
            match edgegate::demo::EchoUpstream::start("demo-upstream", addr).await {
                Ok(_) => {
                    let _ = tx.send(Ok(()));
                    std::future::pending::<()>().await
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot listen on {DEMO_UPSTREAM}: {e}")));
                }
            }
        })
    });
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("edgegate demo: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => return ExitCode::FAILURE,
    }
    let port = listen.rsplit(':').next().unwrap_or("8080");
    let id = "01HZX3M9Q4T8V6W2Y5B7C9D1EF";
    println!(
        "edgegate demo: gateway on http://{listen}, demo upstream on {DEMO_UPSTREAM}\n\
         try (the demo user's session cookie is session=demo-session):\n  \
         curl -s --cookie session=demo-session http://ws-{lower}.localhost:{port}/hello\n  \
         curl -s http://ws-{lower}.localhost:{port}/hello          (no session: 401)\n  \
         curl -s -X POST --cookie session=demo-session http://localhost:{port}/api/dev/{id}/ide-token\n  \
         curl -si --cookie session=demo-session \"<url from the answer above>\"   (IDE bootstrap: cookie + 302)\n  \
         curl -s --cookie \"session=demo-session; edgegate_ide=<its value>\" http://localhost:{port}/__ide/{id}/hello\n  \
         curl -s --cookie session=demo-session http://localhost:{port}/api/servers/{id}/status\n\
         Ctrl-C stops it.",
        lower = id.to_ascii_lowercase()
    );
    run(&config, None, None)
}
