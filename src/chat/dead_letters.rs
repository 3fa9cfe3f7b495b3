//! A webhook's dead letters for the admin API (issue 15, item 3): listed from the store,
//! and moved back to the outbox through the writer, where delivery takes them up again.

use super::Chat;
use crate::metrics;
use crate::protocol::ChatError;
use crate::store::DeadLetter;
use crate::webhook::RetryDeadLetters;
use crate::writer::outcome;

/// Dead letters moved back per writer round: a round stays short however many there are.
const RETRY_ROUND: usize = 500;

impl Chat {
    /// Up to `limit` of `hook`'s dead letters, oldest first, after `seq` `after` if given.
    pub async fn webhook_dead_letters(
        &self,
        hook: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ChatError> {
        self.store
            .webhook_dead_letters(hook, after, limit)
            .await
            .map_err(ChatError::internal)
    }

    /// Moves every dead letter of the configured hook at `hook` back to its outbox, in
    /// rounds of [`RETRY_ROUND`]; answers how many moved.
    pub async fn retry_webhook_dead_letters(&self, hook: &str) -> Result<u64, ChatError> {
        let mut moved = 0;
        loop {
            let rx = self
                .writer
                .submit(RetryDeadLetters {
                    hook: hook.to_owned(),
                    max: RETRY_ROUND,
                })
                .await;
            let round = outcome(rx).await?;
            metrics::webhook_dead_letters_retried(round);
            moved += round;
            if round < RETRY_ROUND as u64 {
                return Ok(moved);
            }
        }
    }
}
