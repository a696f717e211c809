//! Configuration read through the AWS SDK: the database URL.

use crate::client;

#[tokio::test]
async fn the_database_url_comes_from_the_environment_or_a_secrets_manager_secret() {
    let _ = client().await; // asserts the local server is configured
    let sdk = outbox_runtime::aws::sdk_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = secrets
        .create_secret()
        .name(format!("db-{}", uuid::Uuid::now_v7().simple()))
        .secret_string(r#"{"username":"app","password":"s3cr/t!","host":"db.internal","port":5432,"dbname":"orders","engine":"postgres"}"#)
        .send()
        .await
        .unwrap();
    let arn = secret.arn().unwrap().to_owned();

    let from_secret = outbox_runtime::aws::database_url_from(
        |name| (name == "DATABASE_SECRET_ARN").then(|| arn.clone()),
        &sdk,
    )
    .await
    .unwrap();
    assert_eq!(
        from_secret,
        "postgres://app:s3cr%2Ft%21@db.internal:5432/orders?sslmode=require"
    );

    let direct = outbox_runtime::aws::database_url_from(
        |name| (name == "DATABASE_URL").then(|| "postgres://x@y/z".to_owned()),
        &sdk,
    )
    .await
    .unwrap();
    assert_eq!(direct, "postgres://x@y/z", "DATABASE_URL wins");

    let none = outbox_runtime::aws::database_url_from(|_| None, &sdk)
        .await
        .unwrap_err();
    assert_eq!(
        none.to_string(),
        "set DATABASE_URL, or DATABASE_SECRET_ARN to read the credentials from Secrets Manager"
    );
    let missing = outbox_runtime::aws::database_url_from(
        |name| {
            (name == "DATABASE_SECRET_ARN")
                .then(|| "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope".to_owned())
        },
        &sdk,
    )
    .await
    .unwrap_err();
    assert!(
        missing.to_string().starts_with(
            "database secret arn:aws:secretsmanager:us-east-1:123456789012:secret:nope: "
        ),
        "{missing}"
    );
}
