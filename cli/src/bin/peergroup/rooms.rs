//! `peergroup rooms`: lists the server's rooms.

use crate::common::{self, Failure, ServerArgs};
use peergroup_protocol::rooms::{RoomSummary, RoomsReply, RoomsRequest};
use std::io::Write;

/// List the rooms on the server.
///
/// Prints one line per room, sorted by name, and exits 0:
///
///     NAME  MEMBERS members  [password]
///
/// "[password]" appears only for rooms that need one. No rooms, no lines.
#[derive(Debug, Clone, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct RoomsArgs {
    #[command(flatten)]
    server: ServerArgs,
}

/// One line of the listing, without the newline.
pub fn format_room(room: &RoomSummary) -> String {
    let mut line = format!("{}  {} members", room.name, room.members);
    if room.password {
        line.push_str("  [password]");
    }
    line
}

/// Runs `peergroup rooms`.
///
/// # Errors
/// A [`Failure`] when connecting or the request fails.
pub async fn run(args: RoomsArgs) -> Result<(), Failure> {
    let login = format!("rooms-{}", std::process::id());
    let (client, mut events) = common::connect(&args.server, &login).await?;
    let mut ignored = Vec::new();
    let rooms = common::request(
        &client,
        &mut events,
        &RoomsRequest::List,
        &mut ignored,
        |reply| match reply {
            RoomsReply::Rooms(rooms) => Some(rooms),
            _ => None,
        },
    )
    .await;
    client.close().await;
    let mut stdout = std::io::stdout().lock();
    for room in rooms? {
        writeln!(stdout, "{}", format_room(&room))
            .map_err(|e| Failure::new(format!("writing to stdout: {e}")))?;
    }
    stdout
        .flush()
        .map_err(|e| Failure::new(format!("writing to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_count_and_mark_passwords() {
        let open = RoomSummary {
            name: "lobby".into(),
            members: 2,
            password: false,
        };
        assert_eq!(format_room(&open), "lobby  2 members");
        let closed = RoomSummary {
            name: "secret".into(),
            members: 1,
            password: true,
        };
        assert_eq!(format_room(&closed), "secret  1 members  [password]");
    }
}
