//! A database per scenario on the PostgreSQL server, dropped afterwards.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The server: `DATABASE_URL` without its database name.
pub(crate) fn server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    url.rsplit_once('/')
        .map_or(url.as_str(), |(base, _)| base)
        .to_owned()
}

/// A fresh database; drop it with [`Scratch::drop_db`].
pub(crate) struct Scratch {
    server: String,
    name: String,
    pub(crate) url: String,
}

impl Scratch {
    pub(crate) async fn create(server: &str, what: &str) -> anyhow::Result<Self> {
        let name = format!("outbox_bench_{what}_{}", uuid::Uuid::now_v7().simple());
        let admin = PgPool::connect(&format!("{server}/postgres"))
            .await
            .map_err(|err| {
                anyhow::anyhow!("PostgreSQL at {server} does not answer ({err}); set DATABASE_URL")
            })?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(Scratch {
            url: format!("{server}/{name}"),
            server: server.to_owned(),
            name,
        })
    }

    pub(crate) async fn pool(&self, connections: u32) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(connections)
            .connect(&self.url)
            .await?)
    }

    pub(crate) async fn drop_db(self) -> anyhow::Result<()> {
        let admin = PgPool::connect(&format!("{}/postgres", self.server)).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(())
    }
}
