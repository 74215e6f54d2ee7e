//! Typed messages: applications send and receive their own serde types, not bytes.
//!
//! The message kinds of an application protocol are declared once, in a module or crate
//! that both sides share (the role a PIDL file plays in ProudNet), typically as one enum per
//! protocol deriving `Serialize` and `Deserialize`. On the wire that is postcard: the
//! variant's index is the kind, as a varint, followed by its fields in declaration order.
//! Nothing is generated beyond serde's derive.
//!
//! ```
//! use peergroup_protocol::typed::{decode, encode};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Game {
//!     Move { x: f32, y: f32 },
//!     Chat(String),
//!     Ready,
//! }
//!
//! let payload = encode(&Game::Chat("gg".into()))?;
//! assert_eq!(decode::<Game>(&payload)?, Game::Chat("gg".into()));
//! # Ok::<(), peergroup_protocol::typed::TypedError>(())
//! ```
//!
//! # Changing a protocol
//! postcard is not self-describing: the receiver reads the bytes as the type it expects.
//! Appending a variant at the end of an enum keeps every other kind's index, so older
//! receivers only fail on the new kind. Reordering or removing variants, or changing a
//! variant's fields, changes what existing bytes mean; both sides must move together.
//! A receiver reading the wrong type usually gets an error ([`TypedError::Decode`] or
//! [`TypedError::TrailingBytes`]) but may, by coincidence, get a wrong value: the type is
//! not on the wire.
//!
//! For the same reason, serde attributes that make the layout depend on the value do not
//! work: `skip_serializing_if` writes bytes the receiver misreads, `flatten` fails to
//! encode, and `untagged` or `deserialize_any` fail to decode.
//!
//! # Hostile input
//! [`decode`] never panics, and allocates for what the payload holds, not for the lengths
//! it claims: postcard checks a string's or byte array's length against the bytes left
//! before copying, and hands serde a sequence's length as a capacity hint only when that
//! many bytes are left. A map's claimed length goes to serde as is, but serde's collections
//! preallocate at most 1 MiB from any hint, and a map that completes holds only entries
//! that were in the payload.
//! Two kinds of type escape this, and are best kept out of messages from untrusted peers:
//! - a sequence of zero-sized values (`Vec<()>`): its elements take no bytes, so a claimed
//!   length of 2^60 costs 2^60 steps;
//! - a recursive type (`enum Tree { Node(Vec<Tree>) }`): each level of nesting takes a byte
//!   of input but a stack frame of decoding, so a long payload can overflow the stack.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

/// An application message type, serialized with postcard.
///
/// Implemented for every type that is `Serialize` and `DeserializeOwned`: deriving both is
/// all a type needs.
pub trait Message: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> Message for T {}

/// A typed message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedError {
    /// The message's `Serialize` impl failed, or asked for something postcard cannot
    /// write (such as a sequence whose length it does not know up front).
    #[error("could not encode the message: {0}")]
    Encode(#[source] postcard::Error),
    /// The payload is not a valid encoding of the expected type: truncated, an unknown
    /// variant, invalid UTF-8 and the like. Often a sign that sender and receiver disagree
    /// on the type.
    #[error("payload does not decode as the expected message: {0}")]
    Decode(#[source] postcard::Error),
    /// The payload decoded as the expected type with bytes left over: sender and receiver
    /// disagree on the type.
    #[error("payload decoded with {extra} trailing bytes")]
    TrailingBytes {
        /// How many bytes were left, in bytes.
        extra: usize,
    },
}

/// Encodes `message` as the payload of a send.
///
/// The size limits of the path it is sent on apply to the result; this does not check them.
///
/// # Errors
/// [`TypedError::Encode`] when serialization fails. Derived impls never fail unless they
/// use `#[serde(flatten)]`; a hand-written `Serialize` impl may return an error, or
/// serialize a sequence or map without telling its length up front, which postcard cannot
/// encode.
pub fn encode<T: Serialize + ?Sized>(message: &T) -> Result<Bytes, TypedError> {
    postcard::to_stdvec(message)
        .map(Bytes::from)
        .map_err(TypedError::Encode)
}

/// Decodes a received payload as `T`. The whole payload must be used.
///
/// Never panics, and allocates for what `payload` holds, not for the lengths it claims (see
/// the module's notes on hostile input for the two kinds of type this does not cover).
///
/// # Errors
/// [`TypedError::Decode`] when `payload` is not a valid encoding of `T`;
/// [`TypedError::TrailingBytes`] when it is one followed by more bytes, which means the
/// sender encoded something else.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TypedError> {
    let (message, rest) = postcard::take_from_bytes(payload).map_err(TypedError::Decode)?;
    if !rest.is_empty() {
        return Err(TypedError::TrailingBytes { extra: rest.len() });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serializer};
    use std::collections::{BTreeMap, HashMap};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Game {
        Move {
            x: i32,
            y: i32,
            facing: Option<u16>,
        },
        Chat(String, Vec<u8>),
        Inventory {
            items: Vec<Item>,
            owner: Option<String>,
        },
        Ready,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Item {
        id: u64,
        name: String,
    }

    /// A different protocol the receiver might expect by mistake.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Lobby {
        Join(u64),
        Leave,
    }

    fn varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    fn round_trip<T: Message + PartialEq + std::fmt::Debug>(value: &T) {
        let payload = encode(value).unwrap();
        assert_eq!(&decode::<T>(&payload).unwrap(), value);
    }

    fn samples() -> Vec<Game> {
        vec![
            Game::Move {
                x: -3,
                y: i32::MAX,
                facing: Some(270),
            },
            Game::Move {
                x: 0,
                y: 0,
                facing: None,
            },
            Game::Chat("héllo, wörld".into(), vec![0, 255, 7]),
            Game::Inventory {
                items: vec![
                    Item {
                        id: 1,
                        name: "sword".into(),
                    },
                    Item {
                        id: u64::MAX,
                        name: String::new(),
                    },
                ],
                owner: Some("alice".into()),
            },
            Game::Inventory {
                items: Vec::new(),
                owner: None,
            },
            Game::Ready,
        ]
    }

    #[test]
    fn every_kind_of_variant_round_trips() {
        for message in samples() {
            round_trip(&message);
        }
    }

    #[test]
    fn the_variant_index_is_the_kind_on_the_wire() {
        assert_eq!(&encode(&Game::Ready).unwrap()[..], [3]);
        let chat = encode(&Game::Chat("a".into(), vec![9])).unwrap();
        assert_eq!(&chat[..], [1, 1, b'a', 1, 9]);
    }

    #[test]
    fn std_types_round_trip() {
        round_trip(&vec![1u32, 2, 3, u32::MAX]);
        round_trip(&Vec::<String>::new());
        round_trip(&String::from("peergroup"));
        round_trip(&Some(vec![Some(1i8), None]));
        round_trip(&Option::<String>::None);
        round_trip(&(7u8, "pair".to_string(), [1u16, 2, 3]));
        round_trip(&BTreeMap::from([
            (1u32, "a".to_string()),
            (2, "b".to_string()),
        ]));
        round_trip(&HashMap::from([("k".to_string(), vec![1u8])]));
        round_trip(&Bytes::from_static(b"raw"));
    }

    #[test]
    fn unsized_values_encode_like_their_owned_forms() {
        assert_eq!(
            encode("text").unwrap(),
            encode(&"text".to_string()).unwrap()
        );
        let slice: &[u16] = &[5, 6];
        assert_eq!(encode(slice).unwrap(), encode(&vec![5u16, 6]).unwrap());
        assert_eq!(decode::<String>(&encode("text").unwrap()).unwrap(), "text");
    }

    #[test]
    fn a_wrong_type_is_an_error_not_a_panic() {
        let chat = encode(&Game::Chat("hi".into(), vec![])).unwrap();
        // Lobby's variant 1 has no fields: the rest of the chat is left over.
        assert!(matches!(
            decode::<Lobby>(&chat),
            Err(TypedError::TrailingBytes { extra: 4 })
        ));
        // Game has no variant 4.
        assert!(matches!(decode::<Game>(&[4]), Err(TypedError::Decode(_))));
        // Not UTF-8.
        let bytes = encode(&vec![0xffu8, 0xfe]).unwrap();
        assert!(matches!(
            decode::<String>(&bytes),
            Err(TypedError::Decode(_))
        ));
        // Neither a bool nor an option tag.
        assert!(matches!(decode::<bool>(&[2]), Err(TypedError::Decode(_))));
        assert!(matches!(
            decode::<Option<u8>>(&[2, 0]),
            Err(TypedError::Decode(_))
        ));
        assert!(matches!(decode::<Item>(&[]), Err(TypedError::Decode(_))));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut payload = encode(&Game::Ready).unwrap().to_vec();
        payload.extend_from_slice(&[0, 0, 0]);
        let error = decode::<Game>(&payload).unwrap_err();
        assert!(matches!(error, TypedError::TrailingBytes { extra: 3 }));
        assert_eq!(error.to_string(), "payload decoded with 3 trailing bytes");
    }

    #[test]
    fn every_truncation_is_an_error() {
        for message in samples() {
            let payload = encode(&message).unwrap();
            for len in 0..payload.len() {
                assert!(
                    matches!(decode::<Game>(&payload[..len]), Err(TypedError::Decode(_))),
                    "{message:?} cut to {len} bytes"
                );
            }
        }
    }

    #[test]
    fn a_huge_length_prefix_fails_without_allocating_for_it() {
        // 2^60 elements: had any of these been trusted, the allocation would abort the test.
        let mut claim = varint(1 << 60);
        claim.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            decode::<Vec<u64>>(&claim),
            Err(TypedError::Decode(_))
        ));
        assert!(matches!(
            decode::<Vec<u8>>(&claim),
            Err(TypedError::Decode(_))
        ));
        assert!(matches!(
            decode::<String>(&claim),
            Err(TypedError::Decode(_))
        ));
        assert!(matches!(
            decode::<Bytes>(&claim),
            Err(TypedError::Decode(_))
        ));
        assert!(matches!(
            decode::<HashMap<u8, u8>>(&claim),
            Err(TypedError::Decode(_))
        ));
        assert!(matches!(
            decode::<BTreeMap<u8, u8>>(&claim),
            Err(TypedError::Decode(_))
        ));
        // Inside a message: variant 2's item list.
        let mut inventory = vec![2];
        inventory.extend_from_slice(&claim);
        assert!(matches!(
            decode::<Game>(&inventory),
            Err(TypedError::Decode(_))
        ));
        // Longer than any usize: an error too.
        let overlong = [0xff; 11];
        assert!(matches!(
            decode::<Vec<u8>>(&overlong),
            Err(TypedError::Decode(_))
        ));
    }

    #[test]
    fn a_failing_serialize_impl_is_an_encode_error() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refused"))
            }
        }
        assert!(matches!(encode(&Refuses), Err(TypedError::Encode(_))));

        /// A sequence that does not say its length up front.
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq((0u8..10).filter(|n| n % 2 == 0))
            }
        }
        assert!(matches!(
            encode(&Unsized),
            Err(TypedError::Encode(
                postcard::Error::SerializeSeqLengthUnknown
            ))
        ));
    }

    fn any_game() -> impl Strategy<Value = Game> {
        let item = (any::<u64>(), ".{0,8}").prop_map(|(id, name)| Item { id, name });
        prop_oneof![
            (any::<i32>(), any::<i32>(), any::<Option<u16>>())
                .prop_map(|(x, y, facing)| Game::Move { x, y, facing }),
            (".{0,16}", proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(text, bytes)| Game::Chat(text, bytes)),
            (
                proptest::collection::vec(item, 0..4),
                proptest::option::of(".{0,8}")
            )
                .prop_map(|(items, owner)| Game::Inventory { items, owner }),
            Just(Game::Ready),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Game>(&payload);
            let _ = decode::<Lobby>(&payload);
            let _ = decode::<Vec<String>>(&payload);
            let _ = decode::<HashMap<u16, Option<Item>>>(&payload);
        }

        #[test]
        fn mangled_messages_never_panic(
            message in any_game(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut payload = encode(&message).unwrap().to_vec();
            let at = at.index(payload.len());
            payload[at] = byte;
            let _ = decode::<Game>(&payload);
        }

        #[test]
        fn any_message_round_trips(message in any_game()) {
            let payload = encode(&message).unwrap();
            prop_assert_eq!(decode::<Game>(&payload).unwrap(), message);
        }
    }
}
