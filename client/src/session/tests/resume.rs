//! The session's part of resume: frames from the server are counted from the welcome
//! on, confirmed only once the server gave a token (100 ms after the first unconfirmed
//! one, or at once every 256), and a resume re-acks the notices taken.

use super::*;
use peergroup_protocol::resume::{CONFIRM_DELAY, CONFIRM_EVERY};
use peergroup_protocol::ResumeToken;

fn received(uploads: &[Upload]) -> Vec<u64> {
    uploads
        .iter()
        .filter_map(|u| match u {
            Upload::Control(ClientToServer::Received { frames }) => Some(*frames),
            _ => None,
        })
        .collect()
}

fn time(token: u64) -> ServerToClient {
    ServerToClient::Time {
        token,
        server_time_us: 0,
    }
}

#[test]
fn without_a_token_frames_are_counted_but_never_confirmed() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    assert_eq!(s.server_frames_read(), 1, "the welcome");
    for n in 0..300 {
        s.handle_frame(time(n), now).unwrap();
    }
    s.handle_timeout(now + CONFIRM_DELAY);
    assert!(received(&uploads(&mut s)).is_empty());
    assert_eq!(s.server_frames_read(), 301);
    assert_eq!(s.resume_token(), None);
}

#[test]
fn with_a_token_the_count_is_confirmed_on_a_timer_and_every_256_frames() {
    let now = Instant::now();
    let mut s = session(ME, NO_PINGS, now);
    let token = ResumeToken([5; 32]);
    s.handle_frame(
        ServerToClient::ResumeToken {
            token,
            window_ms: 30_000,
        },
        now,
    )
    .unwrap();
    assert_eq!(s.resume_token(), Some((token, Duration::from_secs(30))));
    assert!(
        s.take_timeout_moved(),
        "the timer must wake for the confirmation"
    );
    assert!(s.poll_timeout() <= Some(now + CONFIRM_DELAY));
    assert!(received(&uploads(&mut s)).is_empty(), "not at once");
    s.handle_timeout(now + CONFIRM_DELAY);
    assert_eq!(received(&uploads(&mut s)), vec![2]);

    for n in 0..CONFIRM_EVERY {
        s.handle_frame(time(n), now).unwrap();
    }
    assert_eq!(received(&uploads(&mut s)), vec![2 + CONFIRM_EVERY]);
}

#[test]
fn a_resume_takes_the_new_token_and_acks_the_notices_again() {
    let now = Instant::now();
    let mut s = session_in_group(now);
    let taken = s.notices_taken();
    assert!(taken > 0);
    s.handle_resumed(ResumeToken([9; 32]), Duration::from_secs(10));
    assert_eq!(
        s.resume_token(),
        Some((ResumeToken([9; 32]), Duration::from_secs(10)))
    );
    assert_eq!(
        uploads(&mut s),
        vec![Upload::Control(ClientToServer::Ack { notices: taken })]
    );
    // A `Resumed` on a connection that did not resume is a violation.
    assert!(s
        .handle_frame(
            ServerToClient::Resumed {
                received: 0,
                token: ResumeToken([1; 32]),
                window_ms: 0,
            },
            now,
        )
        .is_err());
}
