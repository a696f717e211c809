//! A fresh PostgreSQL database for one test, by URL: for tests that hand
//! the database to something else (a child process, a store opened from a
//! URL) or take it away mid-test. The one copy for every test binary of
//! the workspace (see `process.rs` for how they include it). A test that
//! only needs a pool takes one from `#[sqlx::test]` instead, which makes a
//! fresh database the same way.

/// The PostgreSQL server the tests use (`DATABASE_URL` names one database
/// on it; `scripts/test` sets it).
pub fn postgres_server() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    url.rsplit_once('/')
        .map_or(url.as_str(), |(base, _)| base)
        .to_owned()
}

/// A database created for one test and dropped (with its connections) when
/// this is dropped.
#[derive(Debug)]
pub struct TempDatabase {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TempDatabase {
    pub fn create(prefix: &str) -> Self {
        let base = postgres_server();
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        let admin = format!("{base}/postgres");
        admin_sql(&admin, &format!("CREATE DATABASE {name}"));
        TempDatabase {
            url: format!("{base}/{name}"),
            name,
            admin,
        }
    }

    /// Drops the database now, as an outage would take it away.
    pub fn drop_now(&self) {
        admin_sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }

    /// Runs a query returning one number, on this database.
    pub fn scalar(&self, sql: &str) -> i64 {
        let rt = runtime();
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&self.url).await.expect("connects");
            let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|err| panic!("{sql}: {err}"));
            pool.close().await;
            value
        })
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        self.drop_now();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn admin_sql(admin: &str, sql: &str) {
    runtime().block_on(async {
        let pool = sqlx::PgPool::connect(admin)
            .await
            .expect("PostgreSQL is reachable (scripts/test checks it)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        pool.close().await;
    });
}
