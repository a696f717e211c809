//! The database URL built from an RDS secret requires TLS; with the
//! `secrets` feature the store connects over it.

use outbox_runtime::aws::postgres_url_from_secret;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// `DATABASE_URL`'s server, as an RDS secret would name it.
fn secret() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let url = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (user, rest) = url.split_once('@').expect("a user in DATABASE_URL");
    let (host_port, dbname) = rest.split_once('/').expect("a database in DATABASE_URL");
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "5432"));
    serde_json::json!({
        "username": user.split(':').next(),
        "password": user.split_once(':').map_or("unused", |(_, p)| p),
        "host": host,
        "port": port.parse::<u16>().expect("a port"),
        "dbname": dbname.split('?').next(),
    })
    .to_string()
}

#[tokio::test]
async fn a_url_from_an_rds_secret_connects_over_tls() {
    let url = postgres_url_from_secret(&secret()).expect("a URL");
    assert!(url.ends_with("?sslmode=require"), "{url}");
    match PgConnection::connect(&url).await {
        Ok(mut conn) => {
            let ssl: bool =
                sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    .fetch_one(&mut conn)
                    .await
                    .expect("pg_stat_ssl");
            assert!(ssl, "connected without TLS through {url}");
        }
        // A server without TLS refuses; a build without TLS would fail before
        // asking it ("SQLx was built without TLS support").
        Err(err) => assert!(
            err.to_string().contains("server does not support TLS"),
            "{url}: {err}"
        ),
    }
}
