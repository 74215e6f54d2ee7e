//! The session's part of resume (ARCHITECTURE.md, "Resume"): the token the server gave,
//! and the count of frames read from the server's main stream, confirmed to the server
//! now and then ([`ClientToServer::Received`]) so it can forget them, and told on a
//! resume so it sends again exactly what was not read.

use super::{Session, Upload};
use peergroup_protocol::resume::Confirmer;
use peergroup_protocol::{ClientToServer, ResumeToken};
use std::time::{Duration, Instant};

/// The session's resume state.
#[derive(Debug)]
pub(super) struct SessionResume {
    /// The server's token and window, once it said it resumes sessions.
    token: Option<(ResumeToken, Duration)>,
    /// Frames read from the server's main stream since login; the welcome counts one.
    frames: Confirmer,
}

impl Default for SessionResume {
    fn default() -> Self {
        Self {
            token: None,
            // The welcome was read before the session began.
            frames: Confirmer::new(1),
        }
    }
}

impl Session {
    /// Counts one frame read from the server's main stream at `now`, and confirms the
    /// count when due (only once the server said it resumes sessions: otherwise it
    /// keeps nothing to forget).
    pub(super) fn count_server_frame(&mut self, now: Instant) {
        let resume = &mut self.resume;
        let was_due = resume.frames.poll_timeout();
        if resume.frames.on_read(now) {
            if resume.token.is_some() {
                if let Some(frames) = resume.frames.take() {
                    self.uploads
                        .push_back(Upload::Control(ClientToServer::Received { frames }));
                }
            } else {
                resume.frames.take();
            }
        } else if was_due.is_none() && resume.frames.poll_timeout().is_some() {
            // The timer must wake for it (at most once per confirmation delay).
            self.timeout_moved = true;
        }
    }

    /// The server resumes sessions: `token` brings this one back within `window`.
    pub(super) fn handle_resume_token(&mut self, token: ResumeToken, window: Duration) {
        self.resume.token = Some((token, window));
    }

    /// Confirms the frames read, if due at `now` (from [`Session::handle_timeout`]).
    pub(super) fn confirm_server_frames(&mut self, now: Instant) {
        let frames = &mut self.resume.frames;
        if frames.poll_timeout().is_none_or(|at| at > now) {
            return;
        }
        let taken = frames.take();
        if let (Some(frames), Some(_)) = (taken, self.resume.token) {
            self.uploads
                .push_back(Upload::Control(ClientToServer::Received { frames }));
        }
    }

    /// When the next confirmation is due.
    pub(super) fn confirm_timeout(&self) -> Option<Instant> {
        self.resume.frames.poll_timeout()
    }

    /// The token and window to resume with, if the server gave one.
    pub fn resume_token(&self) -> Option<(ResumeToken, Duration)> {
        self.resume.token
    }

    /// Frames read from the server's main stream since login (the welcome counts one).
    pub fn server_frames_read(&self) -> u64 {
        self.resume.frames.read()
    }

    /// The server took this session back on a new connection: `token` is the next one.
    /// The count sent in the resume confirmed every frame read; the notice ack, which
    /// the lost connection may have dropped, is sent again.
    pub fn handle_resumed(&mut self, token: ResumeToken, window: Duration) {
        self.resume.token = Some((token, window));
        let read = self.resume.frames.read();
        self.resume.frames.set_confirmed(read);
        self.resume.frames.take();
        if self.notices_taken > 0 {
            self.ack_notices();
        }
    }
}
