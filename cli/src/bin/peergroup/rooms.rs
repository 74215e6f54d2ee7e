//! `peergroup rooms`: lists the server's rooms.

use crate::common::{self, Failure, ServerArgs};
use peergroup_protocol::rooms::{RoomSummary, RoomsReply, RoomsRequest, MAX_LIST_ROOMS};
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
    let rooms = list_every_page(&client, &mut events).await;
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

/// Every room, asking page after page (the server answers at most [`MAX_LIST_ROOMS`] a
/// request, the rate limit spacing a long listing out).
async fn list_every_page(
    client: &peergroup_client::Client,
    events: &mut peergroup_client::ClientEvents,
) -> Result<Vec<RoomSummary>, Failure> {
    let mut ignored = Vec::new();
    let mut rooms: Vec<RoomSummary> = Vec::new();
    loop {
        let request = match rooms.last() {
            None => RoomsRequest::List,
            Some(last) => RoomsRequest::ListAfter {
                after: last.name.clone(),
            },
        };
        let answer = common::request(
            client,
            events,
            &request,
            &mut ignored,
            |reply| match reply {
                RoomsReply::Rooms(rooms) => Some(Ok(rooms)),
                RoomsReply::Refused { reason, .. } => Some(Err(reason)),
                _ => None,
            },
        )
        .await?;
        let page = match answer {
            Ok(page) => page,
            // Past the server's rate limit: the budget refills within a second.
            Err(reason) if reason.starts_with("too many requests") => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(reason) => return Err(Failure::new(format!("listing refused: {reason}"))),
        };
        let full = page.len() >= MAX_LIST_ROOMS;
        rooms.extend(page);
        if !full {
            return Ok(rooms);
        }
    }
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
