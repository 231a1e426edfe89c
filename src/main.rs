//! The `sse-gateway` command. The mode is decided here and only here: `serve` (production, from
//! a file and/or the environment), `dev` (the default without `--config`) and `demo` (the dev
//! setup), `config check`, and the tools `certs`, `token`, `publish`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sse_gateway::app::{ConfigSource, DemoState, Gateway};
use sse_gateway::auth::jwt::{mint_hs256, Claims};
use sse_gateway::config::{self, BrokerKind, Config, JwtKey, Overrides};
use sse_gateway::ingest::pb::PublishRequest;

/// mimalloc instead of glibc's malloc: a unary `Publish` allocates and frees a few hundred
/// small blocks across hyper, h2, rustls and tonic, and with glibc those calls were ~1/6 of its
/// instructions. Measured with `loadgen ingest --mode unary --concurrency 64`, three alternating
/// runs each: 37.5 k → 42.4 k calls/s; idle streams 3.78 → 3.87 KiB each, and the empty
/// process's RSS 17 → 31 MiB (mimalloc's per-thread heaps).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sse-gateway",
    version,
    about = "mTLS gRPC publishers in, one multiplexed SSE stream per browser out",
    long_about = "mTLS gRPC publishers in, one multiplexed SSE stream per browser out.\n\n\
                  Without a subcommand: the dev setup, or `serve` when --config is given.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the production gateway, configured by --config and/or SSE_GATEWAY__* variables.
    /// Never creates or changes a file; every required setting must be given.
    Serve(RunArgs),
    /// Run the dev setup: a dev PKI and secret under certs/ (only missing files are created),
    /// the example publishers and the demo page. The default without --config.
    Dev(RunArgs),
    /// The dev setup with simulated services publishing to the demo page.
    Demo(RunArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a dev PKI: CA, server certificate, client certificates (missing files only).
    Certs(CertsArgs),
    /// Mint a dev JWT (HS256) for a subscriber.
    Token(TokenArgs),
    /// Publish one event over mTLS gRPC and print its id.
    Publish(PublishArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate exactly as `serve` would (file, SSE_GATEWAY__* variables, flags, key files) and
    /// print the effective configuration, secrets redacted. Exit 1 listing every error.
    Check(RunArgs),
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// Configuration file (TOML). Without a subcommand, it means `serve --config FILE`.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides [http] addr.
    #[arg(long)]
    http_addr: Option<String>,
    /// Overrides [grpc] addr.
    #[arg(long)]
    grpc_addr: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            http_addr: self.http_addr.clone(),
            grpc_addr: self.grpc_addr.clone(),
        }
    }
}

#[derive(Args)]
struct CertsArgs {
    /// Folder to write to.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Client certificate names (default: the example services and dev-cli).
    #[arg(long = "service")]
    services: Vec<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// Read the jwt secret from this config file (else certs/dev-secret).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The HS256 secret itself.
    #[arg(long)]
    secret: Option<String>,
    /// User id.
    #[arg(long, default_value = "dev-user")]
    sub: String,
    /// Comma-separated channel patterns the user may read.
    #[arg(long, default_value = "")]
    channels: String,
    /// Comma-separated roles (e.g. admin).
    #[arg(long, default_value = "")]
    roles: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[derive(Args)]
struct PublishArgs {
    /// Config file (for grpc.addr and the CA); default: the dev setup's.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Gateway gRPC address (host:port).
    #[arg(long)]
    addr: Option<String>,
    /// CA certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, default_value = "certs/dev-cli.pem")]
    cert: PathBuf,
    /// Client key (PEM).
    #[arg(long, default_value = "certs/dev-cli-key.pem")]
    key: PathBuf,
    /// Channel, e.g. logs:ws1:wf1.
    #[arg(long)]
    channel: String,
    /// JSON data.
    #[arg(long)]
    data: String,
    /// Event type.
    #[arg(long, default_value = "")]
    event: String,
    /// Idempotency key.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None if cli.run.config.is_some() => serve(cli.run).await,
            None => dev(cli.run, false).await,
            Some(Command::Serve(args)) => serve(args).await,
            Some(Command::Dev(args)) => dev(args, false).await,
            Some(Command::Demo(args)) => dev(args, true).await,
            Some(Command::Config(ConfigCommand::Check(args))) => check(args),
            Some(Command::Certs(args)) => certs(args),
            Some(Command::Token(args)) => token(args),
            Some(Command::Publish(args)) => publish(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `SSE_GATEWAY__…` variables of this process.
fn env_vars() -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(config::ENV_PREFIX)) else {
            continue;
        };
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{name} is not valid UTF-8"))?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

/// The production configuration: file ⊕ environment ⊕ flags, validated.
fn load_config(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
    Ok(Config::load(path, env_vars()?, overrides)?)
}

/// `serve`: production. Nothing is created, no demo page, no built-in publisher.
async fn serve(args: RunArgs) -> anyhow::Result<()> {
    // A reload (SIGHUP) reads the same file, the environment as captured here, the same flags.
    let (overrides, env, file) = (args.overrides(), env_vars()?, args.config);
    let source: ConfigSource =
        Arc::new(move || Ok(Config::load(file.as_deref(), env.clone(), &overrides)?));
    let signals = Signals::register()?;
    let gateway = Gateway::start_reloadable(source()?, None, source).await?;
    println!(
        "listening: http={} grpc={}",
        gateway.http_addr, gateway.grpc_addr
    );
    run_until_signal(gateway, signals, None).await;
    Ok(())
}

/// `dev` and `demo`: the sources completed by the dev setup.
async fn dev(args: RunArgs, simulate: bool) -> anyhow::Result<()> {
    let (overrides, env, file) = (args.overrides(), env_vars()?, args.config);
    let layered = config::layer(file.as_deref(), env.clone(), &overrides);
    let from_env = layered.origins.any_env();
    let certs = Path::new(sse_gateway::dev::CERTS_DIR);
    let setup = sse_gateway::dev::setup(layered, certs, simulate)?;
    for file in &setup.created {
        tracing::info!(file = %file.display(), "dev setup: created");
    }
    // The simulated services use the client certificates beside the CA (the dev PKI, or a
    // folder made by `sse-gateway certs`).
    let simulated = simulate.then(|| {
        setup.pki.clone().unwrap_or_else(|| {
            setup
                .config
                .grpc
                .client_ca
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        })
    });
    let demo = setup.demo_secret.as_ref().map(|s| DemoState {
        secret: Arc::from(s.expose()),
    });
    let has_demo = demo.is_some();
    let memory = setup.config.broker.kind == BrokerKind::Memory;
    // A reload (SIGHUP) completes the same sources the same way.
    let source: ConfigSource = Arc::new(move || {
        let layered = config::layer(file.as_deref(), env.clone(), &overrides);
        Ok(sse_gateway::dev::setup(layered, certs, simulate)?.config)
    });
    let signals = Signals::register()?;
    let gateway = Gateway::start_reloadable(setup.config, demo, source).await?;
    let (http, grpc) = (gateway.http_addr, gateway.grpc_addr);
    let scheme = if gateway.state.tls { "https" } else { "http" };
    println!("listening: http={http} grpc={grpc}");
    let mut parts = Vec::new();
    if setup.pki.is_some() {
        parts.push("dev PKI in certs/".to_owned());
    }
    if has_demo {
        parts.push("dev JWT secret in certs/dev-secret".to_owned());
    }
    if memory {
        parts.push("in-memory broker".to_owned());
    }
    if has_demo {
        parts.push(format!(
            "demo page: {scheme}://{http}/demo/ (with simulated services: `cargo run --release -- demo`)"
        ));
    }
    println!(
        "sse-gateway dev setup (not for production: use `sse-gateway serve`): {}",
        parts.join("; ")
    );
    if has_demo && setup.pki.is_some() {
        println!("  subscribe: curl -N -H \"Authorization: Bearer $(cargo run -q --release -- token --sub alice --channels 'logs:**')\" '{scheme}://{http}/api/sse?channels=logs:ws1:wf1'");
        println!("  publish:   cargo run -q --release -- publish --addr localhost:{} --channel logs:ws1:wf1 --data '{{\"msg\":\"hello\"}}'", grpc.port());
    }
    if from_env {
        println!("  note: SSE_GATEWAY__* variables apply to the dev setup too; production is `sse-gateway serve`");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(certs) = simulated {
        tokio::spawn(sse_gateway::demo::simulate(
            format!("localhost:{}", grpc.port()),
            certs,
            stop.clone(),
        ));
    }
    run_until_signal(gateway, signals, Some(stop)).await;
    Ok(())
}

/// Serves until SIGINT/SIGTERM, then drains; SIGHUP reloads certificates, keys and publishers.
async fn run_until_signal(
    gateway: Gateway,
    mut signals: Signals,
    stop: Option<tokio_util::sync::CancellationToken>,
) {
    while signals.next().await == SignalEvent::Reload {
        tracing::info!("SIGHUP: reloading certificates, keys and publishers");
        // A failure is logged and counted by the reload; the old material stays.
        let _ = gateway.reload();
    }
    tracing::info!("shutting down: draining streams");
    if let Some(stop) = stop {
        stop.cancel();
    }
    gateway.shutdown();
    gateway.wait().await;
}

/// `config check`: what `serve` would do up to binding its ports (Redis is not contacted).
fn check(args: RunArgs) -> anyhow::Result<()> {
    let (raw, config) =
        config::load_effective(args.config.as_deref(), env_vars()?, &args.overrides())?;
    if let Err(errors) = sse_gateway::app::load_material(&config) {
        let list: Vec<String> = errors.iter().map(|e| format!("  - {e:#}")).collect();
        anyhow::bail!(
            "invalid configuration ({} problems):\n{}",
            list.len(),
            list.join("\n")
        );
    }
    print!("{}", raw.to_toml()?);
    eprintln!("configuration is valid: `sse-gateway serve` would start with it");
    Ok(())
}

/// What a process signal asks for.
#[derive(Debug, PartialEq, Eq)]
enum SignalEvent {
    /// SIGHUP.
    Reload,
    /// SIGINT or SIGTERM.
    Stop,
}

/// The process signals the gateway acts on. They are registered before the gateway announces
/// that it listens: the default action of SIGHUP and SIGTERM ends the process, so a signal sent
/// right after the `listening:` line must already find its handler.
struct Signals {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (needs the tokio runtime).
    fn register() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let hangup = signal(SignalKind::hangup())
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload is unavailable");
                })
                .ok();
            Ok(Self {
                hangup,
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal.
    async fn next(&mut self) -> SignalEvent {
        #[cfg(unix)]
        {
            let hangup = async {
                match self.hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = hangup => SignalEvent::Reload,
                _ = self.terminate.recv() => SignalEvent::Stop,
                _ = self.interrupt.recv() => SignalEvent::Stop,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            SignalEvent::Stop
        }
    }
}

fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let services: Vec<&str> = if args.services.is_empty() {
        sse_gateway::pki::DEV_SERVICES.to_vec()
    } else {
        args.services.iter().map(String::as_str).collect()
    };
    let mut created = sse_gateway::pki::ensure_dev_pki(&args.out, &services)?;
    if sse_gateway::pki::ensure_dev_secret(&args.out)?.1 {
        created.push(args.out.join("dev-secret"));
    }
    println!(
        "dev PKI in {} ({} files created, existing files kept): ca.pem, server.pem, {}",
        args.out.display(),
        created.len(),
        services
            .iter()
            .map(|s| format!("{s}.pem"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match (&args.secret, &args.config) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => {
            let config = load_config(Some(path), &Overrides::default())?;
            match &config.jwt.key {
                JwtKey::Secret(secret) => secret.expose().to_owned(),
                JwtKey::SecretFile(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading jwt.secret_file {}", file.display()))?
                    .trim()
                    .to_owned(),
                JwtKey::PublicKeyFile(_) | JwtKey::JwksFile(_) => anyhow::bail!(
                    "the token subcommand mints HS256 tokens; the config uses {}",
                    config.jwt.algorithm
                ),
            }
        }
        (None, None) => std::fs::read_to_string("certs/dev-secret")
            .context("reading certs/dev-secret (run the gateway once, or `sse-gateway certs`, or pass --secret/--config)")?
            .trim()
            .to_owned(),
    };
    let claims = Claims {
        sub: args.sub,
        exp: sse_gateway::event::now_ms() / 1000 + args.ttl,
        channels: split_list(&args.channels),
        roles: split_list(&args.roles),
    };
    println!("{}", mint_hs256(secret.as_bytes(), &claims)?);
    Ok(())
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let (addr, ca) = match &args.config {
        Some(path) => {
            let config = load_config(Some(path), &Overrides::default())?;
            (
                format!("localhost:{}", config.grpc.addr.port()),
                config.grpc.client_ca,
            )
        }
        None => ("localhost:50051".to_owned(), PathBuf::from("certs/ca.pem")),
    };
    let addr = args.addr.unwrap_or(addr);
    let ca = args.ca.unwrap_or(ca);
    let mut client = sse_gateway::client::connect(&addr, &ca, &args.cert, &args.key).await?;
    let response = client
        .publish(PublishRequest {
            channel: args.channel,
            data: args.data,
            event: args.event,
            idempotency_key: args.idempotency_key,
            audience: None,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!("{}", response.id);
    Ok(())
}
