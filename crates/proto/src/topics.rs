//! The delivery class of every event type, declared in one table.
//!
//! * **state** topics carry the latest value of something (latest wins, per key):
//!   a slow client gets the newest value, never a backlog, and is never closed
//!   because of them. They carry no `seq` and are not replayed.
//! * **event** topics carry things that happened: each gets the next `seq`, is kept
//!   in the history for `resume`, and reaches every subscriber in order, exactly once.

/// How a topic is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryClass {
    /// Latest value wins (per key); no seq; not replayed.
    State,
    /// Sequenced, kept in history, delivered exactly once in order.
    Event,
}

/// What the protocol says about one event type (or family of types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicInfo {
    /// The type, or a family written as `prefix.*`.
    pub name: &'static str,
    /// Its delivery class.
    pub class: DeliveryClass,
    /// For state topics with several subjects: the `data` field naming the subject
    /// (one disk, one job), so one subject never overwrites another.
    pub key_field: Option<&'static str>,
    /// May clients publish it through `POST /api/v1/events`?
    pub publishable: bool,
    /// One line for the docs.
    pub summary: &'static str,
}

const fn state(name: &'static str, key_field: Option<&'static str>, summary: &'static str) -> TopicInfo {
    TopicInfo {
        name,
        class: DeliveryClass::State,
        key_field,
        publishable: false,
        summary,
    }
}

const fn event(name: &'static str, summary: &'static str) -> TopicInfo {
    TopicInfo {
        name,
        class: DeliveryClass::Event,
        key_field: None,
        publishable: false,
        summary,
    }
}

/// Every known type. Families (`x.*`) cover all types below that prefix.
/// Order matters only for documentation; lookup prefers exact names.
pub const TOPICS: &[TopicInfo] = &[
    state("system.status", None, "host CPU, memory, load, uptime (latest sample)"),
    state("system.network", None, "per-interface state and rates (latest sample)"),
    state(
        "storage.update",
        None,
        "block devices, filesystems, RAID (latest sample)",
    ),
    state("storage.smart", Some("disk"), "SMART health of one disk, per disk"),
    state(
        "compression.update",
        Some("job_id"),
        "progress of one compression job, per job",
    ),
    state(
        "heartbeat",
        None,
        "server time and connected clients, every heartbeat interval",
    ),
    state("rpc_error", Some("source"), "why a data source is failing, per source"),
    state(
        "connection_error",
        Some("source"),
        "a backend connection problem, per source",
    ),
    TopicInfo {
        name: "notification",
        class: DeliveryClass::Event,
        key_field: None,
        publishable: true,
        summary: "a user-visible notification",
    },
    event("notification.read", "a notification was marked read"),
    event(
        "circuit_breaker.*",
        "a breaker changed state: .open, .half_open, .closed",
    ),
    event("storage.share.*", "a share was .added, .changed or .removed"),
    event("storage.disk.*", "a disk was .added or .removed"),
    event("storage.filesystem.*", "a filesystem was .mounted or .unmounted"),
    event("storage.raid.*", "an array became .degraded or .recovered"),
    event(
        "compression.*",
        "job lifecycle: .started, .completed, .failed, .cancelled",
    ),
    event("audit.*", "a security-relevant action (login, key created, …)"),
    TopicInfo {
        name: "custom.*",
        class: DeliveryClass::Event,
        key_field: None,
        publishable: true,
        summary: "application events published through POST /api/v1/events",
    },
];

/// Whether only admins may receive a type (the audit stream names users and addresses).
pub fn admin_only(event_type: &str) -> bool {
    event_type.starts_with("audit.")
}

/// The class of a type not in the table: an event (never silently conflated).
pub const UNKNOWN: TopicInfo = event("*", "any other type");

/// Looks a type up: exact entry first, then the longest matching family.
pub fn topic_info(event_type: &str) -> TopicInfo {
    if let Some(t) = TOPICS.iter().find(|t| t.name == event_type) {
        return *t;
    }
    TOPICS
        .iter()
        .filter(|t| {
            t.name
                .strip_suffix('*')
                .is_some_and(|prefix| event_type.starts_with(prefix))
        })
        .max_by_key(|t| t.name.len())
        .copied()
        .unwrap_or(UNKNOWN)
}

/// The patterns a new connection is subscribed to, as in the original server.
pub const DEFAULT_SUBSCRIPTIONS: &[&str] = &[
    "system.status",
    "storage.update",
    "compression.update",
    "notification",
    "heartbeat",
    "connection_error",
    "rpc_error",
    "circuit_breaker.*",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(topic_info("system.status").class, DeliveryClass::State);
        assert_eq!(topic_info("compression.update").class, DeliveryClass::State);
        assert_eq!(topic_info("compression.update").key_field, Some("job_id"));
        assert_eq!(topic_info("compression.completed").class, DeliveryClass::Event);
        assert_eq!(topic_info("circuit_breaker.open").class, DeliveryClass::Event);
        assert_eq!(topic_info("storage.share.added").class, DeliveryClass::Event);
        assert_eq!(topic_info("custom.x").class, DeliveryClass::Event);
        assert!(topic_info("custom.x").publishable);
        assert!(topic_info("notification").publishable);
        assert!(!topic_info("notification.read").publishable);
        assert!(!topic_info("system.status").publishable);
        assert_eq!(topic_info("whatever").class, DeliveryClass::Event);
    }

    #[test]
    fn defaults_parse() {
        for p in DEFAULT_SUBSCRIPTIONS {
            crate::Pattern::parse(p).unwrap();
        }
    }
}
