//! A throwaway first measurement of durable deletes per second (the real
//! benchmark tool comes with its own issue). Starts tokend in-process on a
//! temp dir, pre-creates tokens, then deletes them from C concurrent clients
//! (each on its own connection) and prints deletes/s and p50/p99.
//!
//!     cargo run --release --example delete_rate -- 1 32

use std::time::{Duration, Instant};

use tokend::proto as pb;
use tokend::proto::account_service_client::AccountServiceClient;
use tokend::proto::token_service_client::TokenServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Auth = MetadataValue<Ascii>;

/// Attaches the operator's bearer header to every call.
fn bearer(auth: Auth) -> impl tonic::service::Interceptor + Clone {
    move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", auth.clone());
        Ok(r)
    }
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn tokens(
    url: &str,
    auth: &Auth,
) -> TokenServiceClient<InterceptedService<Channel, impl tonic::service::Interceptor + Clone>> {
    TokenServiceClient::with_interceptor(channel(url).await, bearer(auth.clone()))
}

const TOKENS: usize = 4000;

#[tokio::main]
async fn main() {
    let clients: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("client counts"))
        .collect();
    for c in if clients.is_empty() {
        vec![1, 32]
    } else {
        clients
    } {
        run(c).await;
    }
}

/// Where the metrics of this process are served (installed once).
static METRICS: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// (sum, count) of `tokend_commit_batch_size`: changes per durable commit.
fn batch_sizes() -> (f64, f64) {
    use std::io::{Read, Write};
    let Some(addr) = METRICS.get() else {
        return (0.0, 0.0);
    };
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("tokend_commit_batch_size_sum"),
        value("tokend_commit_batch_size_count"),
    )
}

async fn run(clients: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tokend::server::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
    if METRICS.get().is_none() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        config.metrics_addr = Some(addr);
        METRICS.set(addr).unwrap();
    }
    let server = tokend::server::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let secret = std::fs::read_to_string(dir.path().join("operator.token")).unwrap();
    let auth: Auth = format!("Bearer {}", secret.trim()).parse().unwrap();
    let account = AccountServiceClient::with_interceptor(channel(&url).await, bearer(auth.clone()))
        .create_account(pb::CreateAccountRequest {
            name: "bench".into(),
            r#type: pb::AccountType::Client as i32,
            modules: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let desc = "d".repeat(
        std::env::var("DESC")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0),
    );
    let created = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for k in 0..16 {
        let (url, account, desc, auth) =
            (url.clone(), account.id.clone(), desc.clone(), auth.clone());
        set.spawn(async move {
            let mut c = tokens(&url, &auth).await;
            let mut ids = Vec::new();
            for i in (k..TOKENS).step_by(16) {
                let t = c
                    .create_token(pb::CreateTokenRequest {
                        account_id: account.clone(),
                        name: format!("t{i}"),
                        description: desc.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                ids.push(t.token.unwrap().id);
            }
            ids
        });
    }
    let mut ids = Vec::with_capacity(TOKENS);
    while let Some(r) = set.join_next().await {
        ids.extend(r.unwrap());
    }
    println!(
        "created {TOKENS} from 16 clients in {:?}",
        created.elapsed()
    );
    let per_client = TOKENS / clients;
    let before = batch_sizes();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in ids.chunks(per_client).take(clients) {
        let (chunk, url, auth) = (chunk.to_vec(), url.clone(), auth.clone());
        set.spawn(async move {
            let mut c = tokens(&url, &auth).await;
            let mut lat = Vec::with_capacity(chunk.len());
            for id in chunk {
                let t = Instant::now();
                c.delete_token(pb::DeleteTokenRequest {
                    id,
                    ..Default::default()
                })
                .await
                .unwrap();
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut lat: Vec<Duration> = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r.unwrap());
    }
    let elapsed = started.elapsed();
    let after = batch_sizes();
    let per_fsync = (after.0 - before.0) / (after.1 - before.1).max(1.0);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "clients={clients:>3} deletes={} elapsed={:.2}s deletes/s={:.0} p50={:?} p99={:?} deletes/fsync={per_fsync:.1}",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
    server.stop().await.unwrap();
}
