//! Session resume in the registry (ARCHITECTURE.md, "Resume"): a host whose connection
//! was lost without a leave stays, offline, for the resume window; its groups,
//! memberships, pairs and notice log stay as they were, and its peers see nothing. A
//! resume with its current token (single use, rotated on every resume) and its identity
//! brings it back; the window's end removes it as a disconnect would.
//!
//! A spent token stays good for one thing: the resume that spent it may lose its answer
//! (the new connection dies before the client reads `Resumed` and the next token), and
//! the client can only try again with the token it holds. So the presented token is kept
//! as `previous` until the client shows it got the answer: any frame read from it on the
//! new connection (it sends nothing there before the answer). Only the host's own
//! identity can present either token.
//!
//! Also counted here: the frames the registry read from each host's main stream, which
//! the host is told now and then ([`ServerToClient::Received`]) and on a resume, so it
//! sends again exactly what the server did not read.

use super::{host_key, Action, Registry, Timer};
use peergroup_protocol::resume::Confirmer;
use peergroup_protocol::{Fingerprint, HostId, ResumeToken, ServerToClient};
use std::net::SocketAddr;
use std::time::Instant;

/// A host's resume state.
#[derive(Debug, Default)]
pub(super) struct HostResume {
    /// The token that brings the host back; `None` until the driver issues one.
    token: Option<ResumeToken>,
    /// The token the last resume spent, while the client has not shown that it got the
    /// answer with `token` (see the module docs).
    previous: Option<ResumeToken>,
    /// While the host is offline: when its window ends.
    offline_until: Option<Instant>,
    /// The window ended, or the host's kept frames passed their bound: it is being
    /// removed, and no resume brings it back.
    ended: bool,
    /// Frames read from the host's main stream since login.
    uploads: Confirmer,
}

/// Why a resume was refused. Nothing changed in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeRefusal {
    /// The server does not keep hosts ([`RegistryConfig::resume_window`] is zero).
    ///
    /// [`RegistryConfig::resume_window`]: super::RegistryConfig::resume_window
    #[error("the server does not resume sessions")]
    Off,
    /// No such host (never was, or already removed).
    #[error("no such host is kept")]
    UnknownHost,
    /// The host's window ended, or it could not be kept: it is being removed.
    #[error("the host's session has ended")]
    Ended,
    /// Another identity presented the token.
    #[error("the token belongs to another identity")]
    WrongIdentity,
    /// Not the host's current token (spent and superseded, or never issued).
    #[error("stale or unknown resume token")]
    BadToken,
}

/// A resume the registry accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Frames read from the host's main stream since login: the client sends the rest
    /// again.
    pub uploads_read: u64,
    /// Whether the host was offline (`false`: its old connection was still open, and the
    /// new one replaces it).
    pub was_offline: bool,
}

impl Registry {
    /// Gives `host` the token that brings it back (the driver makes it from a secure
    /// random source and sends it to the client). Replaces any earlier one.
    pub fn set_resume_token(&mut self, host: HostId, token: ResumeToken) {
        if let Some(state) = self.hosts.get_mut(host_key(host)) {
            state.resume.token = Some(token);
            state.resume.previous = None;
        }
    }

    /// `host` sent a frame on its connection: if it resumed, it got the answer and the
    /// new token, so the token it resumed with is spent for good.
    pub(super) fn token_delivered(&mut self, host: HostId) {
        if let Some(state) = self.hosts.get_mut(host_key(host)) {
            state.resume.previous = None;
        }
    }

    /// `host`'s connection ended at `now` without a leave: with resume on (and a token
    /// issued) the host goes offline until `now` plus the window and `true` is returned;
    /// otherwise nothing changes and `false` says to remove it
    /// ([`Registry::handle_disconnect`]). Its peers are told nothing either way here.
    pub fn handle_offline(&mut self, host: HostId, now: Instant) -> bool {
        let window = self.config.resume_window;
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return false;
        };
        if window.is_zero() || state.resume.token.is_none() || state.resume.ended {
            return false;
        }
        if state.resume.offline_until.is_none() {
            let until = now + window;
            state.resume.offline_until = Some(until);
            self.timers.insert((until, Timer::ResumeWindow(host)));
        }
        true
    }

    /// A new connection presents `token` to come back as `host`, from `identity` at
    /// `addr`: if it is the host's current token (or the one the last resume spent, while
    /// the client has sent nothing since: that resume's answer may have been lost) and
    /// identity, the host is online again
    /// (it may have been offline, or its old connection may still be half-open), its
    /// server-reflexive address is `addr`, and `next_token` is its token from now on.
    ///
    /// Its relayed pairs whose punch retry is far off (a punch that failed while it was
    /// away) retry soon instead: see `hasten_punches_after_resume`.
    ///
    /// # Errors
    /// [`ResumeRefusal`]: resume off, an unknown or ending host, another identity, or
    /// not the current token. Nothing changes then.
    pub fn handle_resume(
        &mut self,
        host: HostId,
        identity: Fingerprint,
        token: &ResumeToken,
        next_token: ResumeToken,
        addr: SocketAddr,
        now: Instant,
    ) -> Result<Resumed, ResumeRefusal> {
        if self.config.resume_window.is_zero() {
            return Err(ResumeRefusal::Off);
        }
        let state = self
            .hosts
            .get_mut(host_key(host))
            .ok_or(ResumeRefusal::UnknownHost)?;
        let resume = &mut state.resume;
        if resume.ended {
            return Err(ResumeRefusal::Ended);
        }
        if state.identity != identity {
            return Err(ResumeRefusal::WrongIdentity);
        }
        let current = resume.token.as_ref().is_some_and(|t| t.matches(token));
        let previous = resume.previous.as_ref().is_some_and(|t| t.matches(token));
        if !current && !previous {
            return Err(ResumeRefusal::BadToken);
        }
        // The client holds the token it presented until it reads this resume's answer.
        resume.previous = Some(*token);
        resume.token = Some(next_token);
        let was_offline = match resume.offline_until.take() {
            Some(until) => {
                self.timers.remove(&(until, Timer::ResumeWindow(host)));
                true
            }
            None => false,
        };
        let uploads_read = resume.uploads.read();
        // The answer to the resume confirms this count.
        resume.uploads.set_confirmed(uploads_read);
        state.server_reflexive = addr;
        self.hasten_punches_after_resume(host, now);
        Ok(Resumed {
            uploads_read,
            was_offline,
        })
    }

    /// Ends `host`'s chance to resume (the driver could not keep what it needs: its
    /// queue or its unconfirmed frames passed their bounds); the driver removes it next.
    pub fn end_resume(&mut self, host: HostId) {
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return;
        };
        state.resume.ended = true;
        if let Some(until) = state.resume.offline_until.take() {
            self.timers.remove(&(until, Timer::ResumeWindow(host)));
        }
    }

    /// Whether `host` is kept offline, waiting for a resume.
    pub fn is_offline(&self, host: HostId) -> bool {
        self.hosts
            .get(host_key(host))
            .is_some_and(|state| state.resume.offline_until.is_some())
    }

    /// When `host`'s window ends, while it is offline.
    #[cfg(any(test, feature = "unstable-registry"))]
    pub fn offline_until(&self, host: HostId) -> Option<Instant> {
        self.hosts
            .get(host_key(host))
            .and_then(|state| state.resume.offline_until)
    }

    /// Counts one frame read from `host`'s main stream at `now`, and confirms the count
    /// at once every [`CONFIRM_EVERY`](peergroup_protocol::resume::CONFIRM_EVERY) frames
    /// or on a timer. Nothing with resume off, or for a host without a token.
    pub(super) fn count_upload(&mut self, host: HostId, now: Instant) {
        if self.config.resume_window.is_zero() {
            return;
        }
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return;
        };
        if state.resume.token.is_none() {
            // Not resumable (the driver issues every host a token when resume is on).
            return;
        }
        let uploads = &mut state.resume.uploads;
        let was_due = uploads.poll_timeout();
        if uploads.on_read(now) {
            if let Some(frames) = uploads.take() {
                self.send(host, ServerToClient::Received { frames });
            }
        } else if was_due.is_none() {
            if let Some(at) = uploads.poll_timeout() {
                self.timers.insert((at, Timer::Confirm(host)));
            }
        }
    }

    /// A confirmation timer fired.
    pub(super) fn confirm_uploads(&mut self, host: HostId, now: Instant) {
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return;
        };
        let uploads = &mut state.resume.uploads;
        // A timer left over from a count confirmed early: the current one is later.
        if uploads.poll_timeout().is_none_or(|at| at > now) {
            return;
        }
        if state.resume.offline_until.is_some() {
            // Told on the resume instead.
            uploads.take();
            return;
        }
        if let Some(frames) = uploads.take() {
            self.send(host, ServerToClient::Received { frames });
        }
    }

    /// A window timer fired: the host's window ends now unless it came back.
    pub(super) fn end_window(&mut self, host: HostId, now: Instant) {
        let Some(state) = self.hosts.get_mut(host_key(host)) else {
            return;
        };
        match state.resume.offline_until {
            Some(until) if until <= now => {
                state.resume.offline_until = None;
                state.resume.ended = true;
                self.actions.push_back(Action::ResumeWindowEnded { host });
            }
            _ => {}
        }
    }
}
