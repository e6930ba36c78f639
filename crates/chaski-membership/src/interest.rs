//! Interest: whether a subscription wants a topic, and whether two nodes share interest.
//!
//! Everything else in the crate asks these questions through this module only, so that
//! hierarchical wildcards (`sensors/*/temp`, `sensors/**`) can be added here later without
//! touching discovery, pairing or routing. Today a subscription is a plain topic name and matches
//! only itself.

use chaski_wire::Topic;

/// Whether `subscription` wants messages published on `topic`.
pub fn matches(subscription: &Topic, topic: &Topic) -> bool {
    subscription == topic
}

/// Whether any subscription in `subscriptions` wants `topic`.
pub fn wants<'a>(subscriptions: impl IntoIterator<Item = &'a Topic>, topic: &Topic) -> bool {
    subscriptions.into_iter().any(|s| matches(s, topic))
}

/// Whether two subscription sets share interest: some topic wanted by both.
pub fn share_interest(a: &[Topic], b: &[Topic]) -> bool {
    a.iter().any(|t| wants(b, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_topics_match_only_themselves() {
        let a = Topic::from_static("a");
        let b = Topic::from_static("b");
        assert!(matches(&a, &a));
        assert!(!matches(&a, &b));
        assert!(wants([&a, &b], &b));
        assert!(!wants([&a], &b));
        assert!(share_interest(
            &[a.clone(), b.clone()],
            std::slice::from_ref(&b)
        ));
        assert!(!share_interest(&[a], &[b]));
    }
}
