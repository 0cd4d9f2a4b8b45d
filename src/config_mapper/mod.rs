//! The reference Config Mapper: the whitelist service the bridge reads (`tenancy-bridge
//! config-mapper`). An HTTP API over an SQLite database, bearer tokens for writes, mandatory
//! and capped TTLs, an append-only audit.

mod auth;
mod http;
mod store;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{TokenError, Tokens};
pub use http::{MAX_BODY, router};
pub use store::{AuditRecord, Removed, Store, StoreError, StoredEntry};
pub use tls::{TlsError, TlsFiles};

/// Environment variable holding a write token, for deployments without a token file.
pub const TOKEN_ENV: &str = "TENANCY_BRIDGE_TOKEN";
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum MapperError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{TOKEN_ENV}: {0}")]
    TokenEnv(&'static str),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Options {
    pub db: PathBuf,
    pub token_file: Option<PathBuf>,
    pub max_ttl: Duration,
    /// Serve HTTPS with these; plain HTTP without (behind a TLS-terminating proxy).
    pub tls: Option<TlsFiles>,
}

fn tokens(opts: &Options) -> Result<Tokens, MapperError> {
    if let Some(path) = &opts.token_file {
        return Ok(Tokens::load(path)?);
    }
    match std::env::var(TOKEN_ENV) {
        Ok(t) => Tokens::parse(&t).map_err(|(_, reason)| MapperError::TokenEnv(reason)),
        Err(_) => Ok(Tokens::none()),
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MapperError> {
    let tokens = tokens(&opts)?;
    // Read before serving anything: a bad certificate stops the start, naming the file.
    let acceptor = opts.tls.as_ref().map(tls::acceptor).transpose()?;
    if tokens.is_empty() {
        tracing::warn!("no write token (--token-file or {TOKEN_ENV}): the whitelist is read-only");
    }
    let state = Arc::new(http::AppState {
        store: Store::open(&opts.db)?,
        tokens,
        max_ttl_seconds: opts.max_ttl.as_secs() as i64,
        metrics: crate::metrics::MapperMetrics::new().map_err(|e| MapperError::Serve(std::io::Error::other(e)))?,
    });
    match acceptor {
        Some(acceptor) => {
            tls::serve(listener, acceptor, router(state), shutdown).await;
            Ok(())
        }
        None => axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await.map_err(MapperError::Serve),
    }
}

/// The `config-mapper` command: binds `listen`, prints the bound address on stdout (so
/// `--listen 127.0.0.1:0` is usable), serves until SIGTERM or Ctrl-C.
pub fn run(listen: &str, opts: Options) -> Result<(), MapperError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(MapperError::Serve)?;
    if let Some(files) = &opts.tls {
        // A bad certificate or key stops the start before anything listens.
        tls::acceptor(files)?;
    }
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| MapperError::Listen { addr: listen.to_owned(), source })?;
        let addr = listener.local_addr().map_err(MapperError::Serve)?;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{addr}");
        tracing::info!(%addr, scheme, db = %opts.db.display(), "config mapper listening");
        serve(listener, opts, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
