//! Connecting to etcd as `[fleet]` says: endpoints, TLS, credentials, and
//! deadlines on every call so that an unreachable or leaderless cluster is
//! noticed in seconds.

use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::Fleet;

/// No etcd call waits longer than this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn connect(fleet: &Fleet) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), CALL_TIMEOUT)
        // A member cut off from its majority answers nothing rather than
        // stale data, and ends our watches.
        .with_require_leader(true);
    if fleet.ca_file.is_some() || fleet.cert_file.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &fleet.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading fleet.ca_file {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&fleet.cert_file, &fleet.key_file) {
            let cert_pem =
                std::fs::read(cert).with_context(|| format!("reading fleet.cert_file {}", cert.display()))?;
            let key_pem = std::fs::read(key).with_context(|| format!("reading fleet.key_file {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        options = options.with_tls(tls);
    }
    let user = match (&fleet.user, &fleet.password_file) {
        (Some(user), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading fleet.password_file {}", file.display()))?;
            let password = text.lines().next().unwrap_or_default().to_string();
            // etcd drops a token unused for --auth-token-ttl (300 s; the
            // lease's keep-alives do not use it) or at a JWT's expiry: log
            // in again and retry the call, rather than lose the session.
            Some(options.clone().with_user(user.clone(), password).with_auto_token_refresh(true))
        }
        _ => None,
    };
    // One member at a time, the first that answers and has a leader: a
    // client balanced over every endpoint keeps sending some calls to a
    // dead member.
    let mut errors = Vec::new();
    let start = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for i in 0..fleet.endpoints.len() {
        let endpoint = &fleet.endpoints[(start + i) % fleet.endpoints.len()];
        let mut answer = member(endpoint, user.clone().unwrap_or_else(|| options.clone())).await;
        // As etcd's own client does: while etcd's auth is off, go without
        // the user, so that edges can get credentials before `etcdctl auth
        // enable` (which ends this session at its next call; the next
        // session logs in).
        if user.is_some() && answer.as_ref().is_err_and(auth_not_enabled) {
            answer = member(endpoint, options.clone()).await;
        }
        match answer {
            Ok(client) => return Ok(client),
            Err(e) => errors.push(format!("{endpoint}: {e:#}")),
        }
    }
    anyhow::bail!("no etcd member answers with a leader: {}", errors.join("; "))
}

/// Which endpoint the next `connect` tries first (so that retries rotate).
static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn member(endpoint: &str, options: ConnectOptions) -> Result<Client> {
    let connecting = Client::connect([endpoint], Some(options));
    let mut client = match tokio::time::timeout(CALL_TIMEOUT, connecting).await {
        Ok(client) => client?,
        Err(_) => anyhow::bail!("no answer within {CALL_TIMEOUT:?}"),
    };
    let status = deadline("asking for its status", client.status()).await?;
    if status.leader() == 0 {
        anyhow::bail!("it has no leader (cut off from the cluster's majority?)");
    }
    Ok(client)
}

/// etcd refused to log in because its auth is off.
fn auth_not_enabled(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        matches!(e.downcast_ref(), Some(etcd_client::Error::GRpcStatus(status))
            if status.message() == "etcdserver: authentication is not enabled")
    })
}

/// Runs one etcd call with the deadline.
pub async fn deadline<T>(
    what: &str,
    call: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.with_context(|| format!("etcd: {what}")),
        Err(_) => anyhow::bail!("etcd: {what}: no answer within {CALL_TIMEOUT:?}"),
    }
}
