//! Runs a process's controllers and servers as named tasks and stops them together.
//!
//! A task that fails or returns early cancels the whole process (a controller that silently stops
//! is worse than a restart by the kubelet); on shutdown every task gets a grace period.

use std::{future::Future, pin::Pin, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub type TaskResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type BoxedTask = Pin<Box<dyn Future<Output = TaskResult> + Send>>;

pub struct Runner {
    shutdown: CancellationToken,
    tasks: Vec<(String, BoxedTask)>,
    grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("task `{name}` failed: {reason}")]
    TaskFailed { name: String, reason: String },
    #[error("task `{0}` stopped before shutdown was requested")]
    TaskStopped(String),
}

impl Runner {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { shutdown, tasks: Vec::new(), grace: Duration::from_secs(10) }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Adds a task. It must return once `shutdown_token()` is cancelled.
    pub fn spawn(&mut self, name: impl Into<String>, task: impl Future<Output = TaskResult> + Send + 'static) {
        self.tasks.push((name.into(), Box::pin(task)));
    }

    /// Runs every task until shutdown is requested or one of them ends; returns the first failure.
    pub async fn run(self) -> Result<(), RunError> {
        let mut set = JoinSet::new();
        for (name, task) in self.tasks {
            set.spawn(async move { (name, task.await) });
        }
        // Wait for shutdown or for the first task to end, whichever comes first.
        let first_error = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            Some(joined) = set.join_next() => {
                let (name, result) = match joined {
                    Ok(v) => v,
                    Err(e) => ("<panicked task>".to_string(), Err(e.to_string().into())),
                };
                let err = match result {
                    Ok(()) => RunError::TaskStopped(name.clone()),
                    Err(e) => RunError::TaskFailed { name: name.clone(), reason: e.to_string() },
                };
                tracing::error!(task = %name, error = %err, "stopping the process");
                self.shutdown.cancel();
                Some(err)
            }
        };
        // Drain the rest within the grace period.
        let drain = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!("tasks did not stop within {:?}; aborting them", self.grace);
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_stops_the_others() {
        let token = CancellationToken::new();
        let mut runner = Runner::new(token.clone());
        let t = token.clone();
        runner.spawn("waits", async move {
            t.cancelled().await;
            Ok(())
        });
        runner.spawn("fails", async { Err("boom".into()) });
        let err = runner.run().await.unwrap_err();
        assert!(err.to_string().contains("`fails` failed: boom"), "{err}");
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn shutdown_is_clean() {
        let token = CancellationToken::new();
        let mut runner = Runner::new(token.clone());
        let t = token.clone();
        runner.spawn("waits", async move {
            t.cancelled().await;
            Ok(())
        });
        token.cancel();
        runner.run().await.unwrap();
    }
}
