//! Waiting on a deadline that may not exist, as one branch of a
//! `tokio::select!` loop: the computing layer's next first pick, the
//! network's next gossip bundle.

/// Sleeps until `at`, or for ever when there is nothing to wait for.
pub(crate) async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
