//! Lookups by a borrowed stream id.
//!
//! A received message's topic is a slice of its receive buffer: cloning it to build a lookup
//! key costs a reference count that the reading task (on another core) also touches, twice per
//! message (the clone and its drop). These keys borrow the topic instead; they hash exactly as
//! the owned keys they stand for (the same fields, in the same order), and compare equal to
//! them through [`Equivalent`].

use chaski_wire::{Message, NodeId, StreamId, Topic};
use hashbrown::Equivalent;

/// A [`StreamId`], borrowed: hashes and compares as the owned id.
#[derive(Debug, Clone, Copy, Hash)]
pub(crate) struct StreamRef<'a> {
    // The order of `StreamId`'s fields: the derived hashes agree.
    pub(crate) publisher: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) topic: &'a Topic,
}

impl<'a> StreamRef<'a> {
    /// The stream of `message`.
    pub(crate) fn of(message: &'a Message) -> StreamRef<'a> {
        StreamRef {
            publisher: message.publisher,
            incarnation: message.incarnation,
            topic: &message.topic,
        }
    }

    /// The stream `id` names.
    pub(crate) fn to(id: &'a StreamId) -> StreamRef<'a> {
        StreamRef {
            publisher: id.publisher,
            incarnation: id.incarnation,
            topic: &id.topic,
        }
    }

    /// An owned id, with `topic` (say a detached copy) in place of the borrowed one.
    pub(crate) fn with_topic(self, topic: Topic) -> StreamId {
        StreamId {
            publisher: self.publisher,
            incarnation: self.incarnation,
            topic,
        }
    }
}

impl Equivalent<StreamId> for StreamRef<'_> {
    fn equivalent(&self, key: &StreamId) -> bool {
        self.publisher == key.publisher
            && self.incarnation == key.incarnation
            && *self.topic == key.topic
    }
}

/// The duplicate filter's key `(publisher, incarnation, topic)`, borrowed.
#[derive(Debug, Clone, Copy, Hash)]
pub(crate) struct FilterRef<'a>(pub(crate) NodeId, pub(crate) u64, pub(crate) &'a Topic);

impl Equivalent<(NodeId, u64, Topic)> for FilterRef<'_> {
    fn equivalent(&self, key: &(NodeId, u64, Topic)) -> bool {
        self.0 == key.0 && self.1 == key.1 && *self.2 == key.2
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn borrowed_keys_hash_and_compare_as_the_owned_ones() {
        let hasher = foldhash::fast::FixedState::with_seed(7);
        let topic = Topic::from_static("sensors/temperature");
        let id = StreamId {
            publisher: NodeId::from_u128(0x1234_5678_9abc_def0),
            incarnation: 42,
            topic: topic.clone(),
        };
        let borrowed = StreamRef::to(&id);
        assert_eq!(hasher.hash_one(&id), hasher.hash_one(borrowed));
        assert!(borrowed.equivalent(&id));
        let other = StreamId {
            incarnation: 43,
            ..id.clone()
        };
        assert!(!borrowed.equivalent(&other));

        let owned = (id.publisher, id.incarnation, topic.clone());
        let filter = FilterRef(id.publisher, id.incarnation, &topic);
        assert_eq!(hasher.hash_one(&owned), hasher.hash_one(filter));
        assert!(filter.equivalent(&owned));
        let elsewhere = Topic::from_static("sensors/humidity");
        assert!(!FilterRef(id.publisher, id.incarnation, &elsewhere).equivalent(&owned));
    }

    #[test]
    fn a_table_finds_an_owned_key_by_its_borrowed_form() {
        let mut table: hashbrown::HashMap<StreamId, u32, foldhash::fast::RandomState> =
            hashbrown::HashMap::default();
        let message = Message {
            topic: Topic::from_static("t"),
            payload: bytes::Bytes::new(),
            publisher: NodeId::from_u128(9),
            sequence: 1,
            incarnation: 3,
            timestamp_micros: 0,
            hop_limit: 1,
            hops: 0,
            headers: Vec::new(),
        };
        table.insert(StreamId::of(&message), 5);
        assert_eq!(table.get(&StreamRef::of(&message)), Some(&5));
        let restarted = Message {
            incarnation: 4,
            ..message.clone()
        };
        assert_eq!(table.get(&StreamRef::of(&restarted)), None);
    }
}
