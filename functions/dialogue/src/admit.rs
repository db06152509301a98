//! Whether a turn may begin, decided before its message is stored: one user has at most a few
//! turns answered at once, and an agent in this process must have room. A refusal leaves nothing
//! behind; before, a user who filled every generation slot kept everyone else at 503, and each
//! refused turn left a dialogue of one message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ifs_api::ApiError;
use ifs_domain::{MessageId, UserId};
use ifs_store::{Counter, Counters};

use crate::DialogueState;

/// `Retry-After` for a user with every turn in flight: about one short reply.
const RETRY_AFTER: u64 = 5;

/// One turn's place among its user's turns in flight: a lease in the counters' store (Redis in
/// AWS), so that the limit holds across every instance serving the user. It is given back when
/// the turn ends; if the process dies first, it expires by itself.
pub(crate) struct TurnLease {
    counters: Arc<dyn Counters>,
    owner: UserId,
    holder: String,
    most: u32,
    ttl: Duration,
    renewed: Instant,
    held: bool,
}

impl TurnLease {
    /// Takes a place for the turn whose message will be `holder`, or answers 429.
    pub(crate) async fn take(
        state: &DialogueState,
        owner: UserId,
        holder: MessageId,
    ) -> Result<Self, ApiError> {
        let most = state.settings.concurrent_turns;
        // A buffered turn ends within the agent's timeout; a streamed one is renewed as it goes.
        let ttl = state.settings.agent_timeout * 2;
        let holder = holder.to_string();
        let counter = Counter::TurnsInFlight(owner);
        if !state.counters.lease(counter, &holder, state.clock.now(), ttl, most).await? {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_turns",
                format!(
                    "{most} of your messages are being answered already; wait for a reply, then send this again"
                ),
            )
            .retry_after(RETRY_AFTER));
        }
        let counters = Arc::clone(&state.counters);
        Ok(Self { counters, owner, holder, most, ttl, renewed: Instant::now(), held: true })
    }

    /// Keeps the place of a turn that is still going (a long stream), once a quarter of its
    /// lease has passed. A lease that ran out meanwhile comes back only if there is room: a
    /// renewal never puts a user past the limit. A store that cannot be reached now, or no room,
    /// is no reason to stop the reply.
    pub(crate) async fn renew(&mut self, state: &DialogueState) {
        if self.renewed.elapsed() < self.ttl / 4 {
            return;
        }
        self.renewed = Instant::now();
        let counter = Counter::TurnsInFlight(self.owner);
        if let Err(error) =
            self.counters.lease(counter, &self.holder, state.clock.now(), self.ttl, self.most).await
        {
            tracing::warn!(error = ?error, "renewing a turn's lease failed");
        }
    }

    /// Gives the place back, before the user hears the turn ended: whoever sends the next
    /// message as soon as a reply arrives must find it free.
    pub(crate) async fn release(mut self) {
        self.held = false;
        if let Err(error) = self.counters.release(Counter::TurnsInFlight(self.owner), &self.holder).await {
            tracing::warn!(error = ?error, "releasing a turn's lease failed; it expires by itself");
        }
    }
}

impl Drop for TurnLease {
    /// A turn abandoned midway (its client left a buffered request) still gives its place back.
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (counters, owner, holder) =
                (Arc::clone(&self.counters), self.owner, std::mem::take(&mut self.holder));
            runtime.spawn(async move {
                let _ = counters.release(Counter::TurnsInFlight(owner), &holder).await;
            });
        }
    }
}
