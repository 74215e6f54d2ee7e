//! The timer task: the session's deadlines fall due whether or not input arrives, so one
//! task sleeps until the next and runs it, rather than each reader looking at the clock.

use crate::driver::shared::Inner;
use std::sync::Arc;
use tokio::time::Instant;

/// The session's timer, while the client lives: sleeps until
/// [`Session::poll_timeout`](crate::session::Session::poll_timeout) (acks due to direct
/// peers, dating and timing out direct messages, pings, clock requests, link reports),
/// runs `handle_timeout` then, and looks again whenever input moved a deadline earlier
/// ([`Inner::flush`] wakes `timer_moved`).
pub(crate) async fn tick(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut core = inner.lock();
            let now = std::time::Instant::now();
            if core.session.poll_timeout().is_some_and(|at| at <= now) {
                core.session.handle_timeout(now);
                // Looked at again just below: no need to wake this task for it.
                core.session.take_timeout_moved();
                inner.flush_and_wake(&mut core);
            }
            core.session.poll_timeout()
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = inner.timer_moved.notified() => {}
            // The session's, not one connection's: the timer runs on through a resume.
            _ = inner.ended.cancelled() => return,
        }
    }
}
