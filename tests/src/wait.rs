//! Polling with a deadline: the only way the harness and the suites wait for anything.
//! A pause between two polls is not synchronisation; the condition polled is.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;

/// A deadline with a growing pause between polls (50 ms, doubling up to 250 ms).
#[derive(Debug, Clone)]
pub struct Deadline {
    end: Instant,
    timeout: Duration,
    pause: Duration,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self {
            end: Instant::now() + timeout,
            timeout,
            pause: Duration::from_millis(50),
        }
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.end
    }

    /// The timeout the deadline was made with (for messages).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits before the next poll (never past the deadline).
    pub async fn pause(&mut self) {
        let left = self.end.saturating_duration_since(Instant::now());
        tokio::time::sleep(self.pause.min(left)).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(250));
    }
}

/// Calls `probe` until it returns `Ok(Some(value))` or `timeout` has passed. `Ok(None)` and
/// `Err(..)` both mean "not yet"; the last error is reported if the deadline passes.
///
/// # Errors
/// When the deadline passes first: names `what` and the last probe error.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let mut deadline = Deadline::after(timeout);
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if deadline.has_passed() {
            let detail =
                last_error.map_or_else(|| "condition still false".to_owned(), |e| format!("{e:#}"));
            return Err(anyhow!(
                "timed out after {timeout:?} waiting for {what}: {detail}"
            ));
        }
        deadline.pause().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_ready_value() {
        let mut calls = 0;
        let value = wait_until("three calls", Duration::from_secs(5), || {
            calls += 1;
            let ready = calls >= 3;
            async move { Ok(ready.then_some(calls)) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn reports_the_last_error_at_the_deadline() {
        let error = wait_until::<(), _, _>("never", Duration::from_millis(120), || async {
            Err(anyhow!("still broken"))
        })
        .await
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("never") && text.contains("still broken"),
            "{text}"
        );
    }
}
