#[handler(name = "email.welcome", max_attempts = 5)]
pub async fn send_welcome(msg: UserSignedUp) -> Result<(), std::io::Error> {
    println!("welcome, {}", msg.email);
    Ok(())
}
