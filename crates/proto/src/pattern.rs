//! Subscription patterns: an exact event type, `prefix.*`, or `*`.

use std::fmt;

/// Longest pattern or event type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 128;

/// One subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// `*`: every event type.
    All,
    /// `prefix.*`: every type starting with `prefix.` (the stored string keeps the dot).
    Prefix(String),
    /// An exact event type such as `system.status`.
    Exact(String),
}

/// Why a pattern string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// The offending input.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

/// Checks an event type name: dot-separated segments of `[a-z0-9_-]`.
pub fn validate_type(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_TYPE_LEN {
        return Err("longer than 128 bytes");
    }
    for segment in name.split('.') {
        if segment.is_empty() {
            return Err("empty segment");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err("segments may contain only a-z, 0-9, '_' and '-'");
        }
    }
    Ok(())
}

impl Pattern {
    /// Parses `*`, `prefix.*` or an exact type.
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let err = |reason| PatternError {
            pattern: s.chars().take(MAX_TYPE_LEN + 8).collect(),
            reason,
        };
        if s == "*" {
            return Ok(Pattern::All);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            validate_type(prefix).map_err(err)?;
            return Ok(Pattern::Prefix(format!("{prefix}.")));
        }
        if s.contains('*') {
            return Err(err("'*' is allowed only alone or as a final '.*'"));
        }
        validate_type(s).map_err(err)?;
        Ok(Pattern::Exact(s.to_owned()))
    }

    /// Whether the pattern can only match admin-only types (`audit.*`), so a
    /// viewer asking for it is refused rather than silently getting nothing.
    pub fn admin_only(&self) -> bool {
        match self {
            Pattern::All => false,
            Pattern::Prefix(p) => crate::topics::admin_only(p),
            Pattern::Exact(t) => crate::topics::admin_only(t),
        }
    }

    /// Whether an event type matches this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(p) => event_type.starts_with(p.as_str()),
            Pattern::Exact(e) => e == event_type,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Exact(e) => f.write_str(e),
        }
    }
}

/// The set of patterns one client is subscribed to.
///
/// A sorted, deduplicated `Vec`: sets are small, matching walks every pattern
/// anyway, and a `BTreeSet` node costs ~400 bytes even for one pattern, which
/// matters with tens of thousands of connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionSet {
    patterns: Vec<Pattern>,
}

impl SubscriptionSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from already-parsed patterns.
    pub fn from_patterns(patterns: impl IntoIterator<Item = Pattern>) -> Self {
        let mut set = SubscriptionSet::default();
        set.add(patterns);
        set
    }

    /// Adds patterns; returns whether the set changed.
    pub fn add(&mut self, patterns: impl IntoIterator<Item = Pattern>) -> bool {
        let before = self.patterns.len();
        self.patterns.extend(patterns);
        self.patterns.sort_unstable();
        self.patterns.dedup();
        self.patterns.shrink_to_fit();
        self.patterns.len() != before
    }

    /// Removes patterns (exactly as subscribed); returns whether the set changed.
    pub fn remove<'a>(&mut self, patterns: impl IntoIterator<Item = &'a Pattern>) -> bool {
        let before = self.patterns.len();
        for p in patterns {
            self.patterns.retain(|q| q != p);
        }
        self.patterns.shrink_to_fit();
        self.patterns.len() != before
    }

    /// Whether any pattern matches the event type.
    pub fn matches(&self, event_type: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(event_type))
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns in canonical order (`*`, then `prefix.*`, then exact types).
    pub fn iter(&self) -> impl Iterator<Item = &Pattern> {
        self.patterns.iter()
    }

    /// The patterns as strings, in canonical order, for replies.
    pub fn to_strings(&self) -> Vec<String> {
        self.patterns.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let all = Pattern::parse("*").unwrap();
        let pre = Pattern::parse("storage.*").unwrap();
        let exact = Pattern::parse("system.status").unwrap();
        assert!(all.matches("anything.at.all"));
        assert!(pre.matches("storage.update"));
        assert!(pre.matches("storage.disk.added"));
        assert!(!pre.matches("storage"));
        assert!(!pre.matches("storagex.update"));
        assert!(exact.matches("system.status"));
        assert!(!exact.matches("system.status.x"));
        assert_eq!(pre.to_string(), "storage.*");
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in ["", "a*", "*.x", "a..b", "A.b", "a.*.*", "sp ace", "a.b*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Pattern::parse(&"a".repeat(200)).is_err());
    }

    #[test]
    fn set_add_remove() {
        let mut s = SubscriptionSet::new();
        assert!(s.add([Pattern::parse("a.*").unwrap()]));
        assert!(!s.add([Pattern::parse("a.*").unwrap()]));
        assert!(s.matches("a.b"));
        assert!(s.remove(&[Pattern::parse("a.*").unwrap()]));
        assert!(!s.matches("a.b"));
    }
}
