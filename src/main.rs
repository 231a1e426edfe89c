//! The `sse-gateway` command: serve (default), certs, token, publish, demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sse_gateway::app::Gateway;
use sse_gateway::auth::jwt::{mint_hs256, Claims};
use sse_gateway::config::{Config, Overrides};
use sse_gateway::ingest::pb::PublishRequest;

#[derive(Parser)]
#[command(
    name = "sse-gateway",
    version,
    about = "mTLS gRPC publishers in, one multiplexed SSE stream per browser out",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Run the gateway in dev mode with simulated services and the demo page.
    Demo(ServeArgs),
    /// Generate a dev PKI: CA, server certificate, client certificates.
    Certs(CertsArgs),
    /// Mint a dev JWT (HS256) for a subscriber.
    Token(TokenArgs),
    /// Publish one event over mTLS gRPC and print its id.
    Publish(PublishArgs),
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Configuration file (TOML). Without one, the gateway runs the dev setup.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides [http] addr.
    #[arg(long)]
    http_addr: Option<String>,
    /// Overrides [grpc] addr.
    #[arg(long)]
    grpc_addr: Option<String>,
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
            None => serve(cli.serve, false).await,
            Some(Command::Serve(args)) => serve(args, false).await,
            Some(Command::Demo(args)) => serve(args, true).await,
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

fn load_config(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
    let env = std::env::vars().filter(|(k, _)| k.starts_with(sse_gateway::config::ENV_PREFIX));
    Ok(Config::load(path, env, overrides)?)
}

async fn serve(args: ServeArgs, demo: bool) -> anyhow::Result<()> {
    let overrides = Overrides {
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
    };
    let config = load_config(args.config.as_deref(), &overrides)?;
    let dev = config.dev;
    let gateway = Gateway::start(config, demo).await?;
    let http = gateway.http_addr;
    let grpc = gateway.grpc_addr;
    let scheme = if gateway.state.tls { "https" } else { "http" };
    println!("listening: http={http} grpc={grpc}");
    if dev {
        println!(
            "sse-gateway dev setup (no config file): dev PKI and JWT secret in certs/, in-memory broker; demo page: {scheme}://{http}/demo/ (with simulated services: `cargo run --release -- demo`)"
        );
        println!("  subscribe: curl -N -H \"Authorization: Bearer $(cargo run -q --release -- token --sub alice --channels 'logs:**')\" '{scheme}://{http}/api/sse?channels=logs:ws1:wf1'");
        println!("  publish:   cargo run -q --release -- publish --addr localhost:{} --channel logs:ws1:wf1 --data '{{\"msg\":\"hello\"}}'", grpc.port());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    if demo {
        let certs = PathBuf::from(&gateway.state.config.raw.grpc.client_ca)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        tokio::spawn(sse_gateway::demo::simulate(
            format!("localhost:{}", grpc.port()),
            certs,
            stop.clone(),
        ));
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining streams");
    stop.cancel();
    gateway.shutdown();
    gateway.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let services: Vec<&str> = if args.services.is_empty() {
        sse_gateway::pki::DEV_SERVICES.to_vec()
    } else {
        args.services.iter().map(String::as_str).collect()
    };
    sse_gateway::pki::ensure_dev_pki(&args.out, &services)?;
    sse_gateway::pki::ensure_dev_secret(&args.out)?;
    println!(
        "dev PKI in {}: ca.pem, server.pem, {}",
        args.out.display(),
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
            let jwt = &config.raw.jwt;
            if jwt.algorithm != "HS256" {
                anyhow::bail!("the token subcommand mints HS256 tokens; the config uses {}", jwt.algorithm);
            }
            if jwt.secret.is_empty() {
                std::fs::read_to_string(&jwt.secret_file)
                    .with_context(|| format!("reading jwt.secret_file {}", jwt.secret_file))?
                    .trim()
                    .to_owned()
            } else {
                jwt.secret.clone()
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
                format!("localhost:{}", config.grpc_addr.port()),
                PathBuf::from(&config.raw.grpc.client_ca),
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
