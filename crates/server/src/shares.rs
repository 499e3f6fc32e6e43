//! Share validation: what a share definition must satisfy before it is stored.
//! No SQL here (that is `store::shares`); the filesystem is touched only on the
//! blocking pool.
//!
//! Every field is checked and every rejection is reported, so a form can mark
//! all its mistakes at once. Values end up in generated `smb.conf` and
//! `/etc/exports` files, so the character sets are deliberately narrow: a
//! newline, comma or parenthesis accepted here would be an injection there.
//!
//! Path rules, in the order they are applied, and why in that order:
//! 1. syntax (absolute, no `..`, no NUL or control characters);
//! 2. forbidden places (`/`, `/etc`, `/proc`, `/sys`, `/dev`, `/boot`, `/run`,
//!    anything under or containing them, and the data directory, which holds the
//!    database and secrets), compared lexically: refused whatever the roots are;
//! 3. the share roots, compared lexically: without a root the path is refused
//!    before the filesystem is touched, so the API cannot be used to probe which
//!    paths exist outside the directories the administrator opened up;
//! 4. the path is canonicalized (symlinks resolved) and 2 and 3 are applied
//!    again to the result, so a symlink inside a root cannot lead out of it or
//!    into a forbidden place;
//! 5. it must be a directory.
//!
//! The canonical path is what is stored: the definition names the directory
//! that was checked, not a link that may later point elsewhere. A share root
//! itself may be shared (unless it is a forbidden place).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use sigmavault_proto::FieldError;

use crate::config::Config;
use crate::store::shares::{NewShare, Share};

/// Longest share name, in characters.
pub const MAX_NAME: usize = 80;
/// Longest comment, in characters.
pub const MAX_COMMENT: usize = 256;
/// Most `allowed_hosts` entries.
pub const MAX_HOSTS: usize = 64;
/// Most `allowed_users` entries.
pub const MAX_USERS: usize = 256;
/// Longest path, in bytes (PATH_MAX less the terminating NUL).
pub const MAX_PATH: usize = 4095;
/// Longest host entry (a DNS name's limit).
const MAX_HOST: usize = 253;
/// Longest user or group name, without the `@` and `$` decorations.
const MAX_USER: usize = 32;

/// The protocols a share may use.
pub const PROTOCOLS: &[&str] = &["smb", "nfs"];

/// The fields a client may set, in the order errors are reported.
pub const FIELDS: &[&str] = &[
    "name",
    "path",
    "protocol",
    "read_only",
    "allowed_hosts",
    "allowed_users",
    "comment",
];

/// Fields of a record that the server assigns.
const SERVER_FIELDS: &[&str] = &["id", "created_at", "updated_at"];

/// Names Samba gives a meaning of its own (`[global]`, `[homes]`, …) or that
/// Windows uses for administrative shares.
const RESERVED_NAMES: &[&str] = &["homes", "printers", "print$", "ipc$", "admin$", "global"];

/// System directories never shared, nor anything under or containing them.
const FORBIDDEN_DIRS: &[&str] = &["/etc", "/proc", "/sys", "/dev", "/boot", "/run"];

/// Where shares may live: taken from the configuration for each request.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    /// `--share-root` directories.
    pub share_roots: Vec<PathBuf>,
    /// The data directory (never shared).
    pub data_dir: PathBuf,
}

impl PathPolicy {
    /// The policy of a configuration.
    pub fn from_config(c: &Config) -> Self {
        PathPolicy {
            share_roots: c.share_roots.clone(),
            data_dir: c.data_dir.clone(),
        }
    }
}

/// Why a share definition was not accepted.
#[derive(Debug)]
pub enum Rejected {
    /// The definition is wrong; every rejected field is listed.
    Fields(Vec<FieldError>),
    /// The check itself could not run (the blocking pool failed).
    Internal(String),
}

fn field_error(field: impl Into<String>, code: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        code: code.to_owned(),
        message: message.into(),
    }
}

/// A record's settings as a request body, for merging a partial update over it.
pub fn body_of(share: &Share) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), Value::from(share.name.clone()));
    m.insert("path".into(), Value::from(share.path.clone()));
    m.insert("protocol".into(), Value::from(share.protocol.clone()));
    m.insert("read_only".into(), Value::from(share.read_only));
    m.insert("allowed_hosts".into(), Value::from(share.allowed_hosts.clone()));
    m.insert("allowed_users".into(), Value::from(share.allowed_users.clone()));
    m.insert("comment".into(), Value::from(share.comment.clone()));
    m
}

/// Checks a full share definition. `name_taken` says whether another share
/// already uses the body's name (the caller asks the store; this module has no
/// SQL); it is reported only when the name is otherwise valid.
///
/// The path is checked on the blocking pool: canonicalizing can stall on a slow
/// or hung mount, and that must not hold an async worker.
pub async fn validate(body: Map<String, Value>, policy: PathPolicy, name_taken: bool) -> Result<NewShare, Rejected> {
    let mut errors = Vec::new();
    let name = take(check_name(body.get("name")), &mut errors);
    if let Some(name) = &name
        && name_taken
    {
        errors.push(field_error(
            "name",
            "duplicate",
            format!("a share named {name:?} already exists (names are compared ignoring case)"),
        ));
    }
    let raw_path = take(check_path_syntax(body.get("path")), &mut errors);
    let protocol = take(check_protocol(body.get("protocol")), &mut errors);
    let read_only = take(check_read_only(body.get("read_only")), &mut errors);
    let allowed_hosts = check_list(
        "allowed_hosts",
        body.get("allowed_hosts"),
        MAX_HOSTS,
        "invalid_host",
        check_host,
        &mut errors,
    );
    let allowed_users = check_list(
        "allowed_users",
        body.get("allowed_users"),
        MAX_USERS,
        "invalid_user",
        check_user,
        &mut errors,
    );
    let comment = take(check_comment(body.get("comment")), &mut errors);
    for key in body.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        let message = if SERVER_FIELDS.contains(&key.as_str()) {
            format!("{key} is set by the server; leave it out")
        } else {
            format!("unknown field (a share has {})", FIELDS.join(", "))
        };
        errors.push(field_error(shown_key(key), "unknown_field", message));
    }

    let path = match raw_path {
        Some(raw) => {
            let checked = tokio::task::spawn_blocking(move || check_path_on_disk(&raw, &policy))
                .await
                .map_err(|e| Rejected::Internal(format!("the path check failed: {e}")))?;
            take(checked, &mut errors)
        }
        None => None,
    };

    if !errors.is_empty() {
        // Field order, whatever order the checks ran in; entries of one list stay in index order.
        errors.sort_by_key(|e| {
            let base = e.field.split('[').next().unwrap_or("");
            FIELDS.iter().position(|f| *f == base).unwrap_or(FIELDS.len())
        });
        return Err(Rejected::Fields(errors));
    }
    match (name, path, protocol, read_only, allowed_hosts, allowed_users, comment) {
        (
            Some(name),
            Some(path),
            Some(protocol),
            Some(read_only),
            Some(allowed_hosts),
            Some(allowed_users),
            Some(comment),
        ) => Ok(NewShare {
            name,
            path,
            protocol,
            read_only,
            allowed_hosts,
            allowed_users,
            comment,
        }),
        _ => Err(Rejected::Internal(
            "a share field was neither accepted nor rejected".into(),
        )),
    }
}

fn take<T>(r: Result<T, FieldError>, errors: &mut Vec<FieldError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

/// A key as it may be echoed in an error: bounded, and without control characters.
fn shown_key(key: &str) -> String {
    key.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// A value that must be a string, or absent (`None`). `null` counts as absent.
fn string<'a>(field: &str, v: Option<&'a Value>) -> Result<Option<&'a str>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(field_error(
            field,
            "invalid",
            format!("must be a string, not {}", kind(other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Shares are named in ASCII only: name uniqueness is decided on the
/// lower-cased name, and Unicode case folding and normalization differ between
/// Samba, Windows clients and Rust, so two names this server considered
/// different could reach a client as the same share.
fn check_name(v: Option<&Value>) -> Result<String, FieldError> {
    let err = |code: &str, message: String| field_error("name", code, message);
    let name = match string("name", v)? {
        None | Some("") => return Err(err("required", "a share needs a name".into())),
        Some(s) => s,
    };
    if name.chars().count() > MAX_NAME {
        return Err(err("too_long", format!("longer than {MAX_NAME} characters")));
    }
    let lower = name.to_ascii_lowercase();
    let drive = lower.len() == 2 && lower.starts_with(|c: char| c.is_ascii_lowercase()) && lower.ends_with('$');
    if RESERVED_NAMES.contains(&lower.as_str()) || drive {
        return Err(err(
            "reserved_name",
            format!(
                "{name:?} is reserved by SMB (homes, printers, global, print$, IPC$, ADMIN$ and drive shares like C$)"
            ),
        ));
    }
    if name.starts_with(['.', '-', '$']) {
        return Err(err("invalid", "must not start with '.', '-' or '$'".into()));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(err("invalid", "must not start or end with a space".into()));
    }
    if name.chars().any(char::is_control) {
        return Err(err("invalid", "must not contain control characters".into()));
    }
    let last = name.len() - 1;
    if let Some((_, bad)) = name
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') || (c == '$' && i == last)))
    {
        return Err(err(
            "invalid",
            format!(
                "{bad:?} is not allowed: use ASCII letters, digits, '-', '_', '.', inner spaces, \
                 and '$' only at the end (a hidden SMB share)"
            ),
        ));
    }
    Ok(name.to_owned())
}

/// The checks that need no filesystem.
fn check_path_syntax(v: Option<&Value>) -> Result<String, FieldError> {
    let err = |code: &str, message: String| field_error("path", code, message);
    let path = match string("path", v)? {
        None | Some("") => return Err(err("required", "a share needs a directory".into())),
        Some(s) => s,
    };
    if path.len() > MAX_PATH {
        return Err(err("too_long", format!("longer than {MAX_PATH} bytes")));
    }
    path_text(path)?;
    if !path.starts_with('/') {
        return Err(err("not_absolute", "must be an absolute path (start with '/')".into()));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(err("invalid", "must not contain '..' components".into()));
    }
    Ok(path.to_owned())
}

/// Characters a path may not hold: they would end a line or a field of a
/// generated configuration file (a symlink can lead to such a name too, so the
/// canonical path is checked again).
fn path_text(path: &str) -> Result<(), FieldError> {
    if path.contains('\0') {
        return Err(field_error("path", "invalid", "must not contain a NUL byte"));
    }
    if path.chars().any(char::is_control) {
        return Err(field_error("path", "invalid", "must not contain control characters"));
    }
    Ok(())
}

/// A path with `.` and repeated separators removed, without touching the disk.
fn lexical(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// The forms of a directory a path is compared against: as written (made
/// absolute) and canonical, when it exists.
fn forms(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(abs) = std::path::absolute(dir) {
        out.push(lexical(&abs));
    }
    if let Ok(canon) = std::fs::canonicalize(dir)
        && !out.contains(&canon)
    {
        out.push(canon);
    }
    out
}

/// Why `path` may never be shared, if it may not.
fn forbidden(path: &Path, system: &[PathBuf], data: &[PathBuf]) -> Option<String> {
    if path == Path::new("/") {
        return Some("the root directory is never shared".into());
    }
    if let Some(dir) = system.iter().find(|d| path.starts_with(d) || d.starts_with(path)) {
        return Some(format!(
            "{} is, is inside, or contains the system directory {}, which is never shared",
            path.display(),
            dir.display()
        ));
    }
    if data.iter().any(|d| path.starts_with(d) || d.starts_with(path)) {
        return Some(format!(
            "{} is, is inside, or contains the server's data directory (database and secrets), which is never shared",
            path.display()
        ));
    }
    None
}

/// Steps 2–5 of the path rules (see the module docs). Blocking.
fn check_path_on_disk(raw: &str, policy: &PathPolicy) -> Result<String, FieldError> {
    let err = |code: &str, message: String| field_error("path", code, message);
    let given = lexical(Path::new(raw));
    let system: Vec<PathBuf> = FORBIDDEN_DIRS.iter().flat_map(|d| forms(Path::new(d))).collect();
    let data = forms(&policy.data_dir);
    if let Some(why) = forbidden(&given, &system, &data) {
        return Err(err("forbidden_path", why));
    }
    if policy.share_roots.is_empty() {
        return Err(err(
            "outside_share_roots",
            "no share roots are configured, so no directory may be shared; the administrator must start the \
             server with --share-root DIR (repeatable; SIGMAVAULT_SHARE_ROOT or share_root in the config file)"
                .into(),
        ));
    }
    let roots: Vec<Vec<PathBuf>> = policy.share_roots.iter().map(|r| forms(r)).collect();
    let root_list = || {
        policy
            .share_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !roots.iter().flatten().any(|r| given.starts_with(r)) {
        return Err(err(
            "outside_share_roots",
            format!("must be inside one of the share roots: {}", root_list()),
        ));
    }
    let canonical = std::fs::canonicalize(&given).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err("not_found", format!("{} does not exist", given.display())),
        std::io::ErrorKind::NotADirectory => err(
            "not_a_directory",
            format!("a component of {} is not a directory", given.display()),
        ),
        _ => err("invalid", format!("{} cannot be resolved: {e}", given.display())),
    })?;
    if let Some(why) = forbidden(&canonical, &system, &data) {
        return Err(err(
            "forbidden_path",
            format!("resolves to {}: {why}", canonical.display()),
        ));
    }
    // Only the canonical forms count now: a lexical match here would let a
    // symlink named inside a root stand for a directory outside it.
    let canonical_roots: Vec<PathBuf> = policy
        .share_roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    if !canonical_roots.iter().any(|r| canonical.starts_with(r)) {
        return Err(err(
            "outside_share_roots",
            format!(
                "resolves to {}, which is outside every share root ({}); a symlink leads out",
                canonical.display(),
                root_list()
            ),
        ));
    }
    let meta = std::fs::metadata(&canonical).map_err(|e| err("invalid", format!("cannot be read: {e}")))?;
    if !meta.is_dir() {
        return Err(err(
            "not_a_directory",
            format!("{} is not a directory", canonical.display()),
        ));
    }
    let text = canonical.to_str().ok_or_else(|| {
        err(
            "invalid",
            format!("resolves to {}, which is not UTF-8", canonical.display()),
        )
    })?;
    path_text(text)?;
    if text.len() > MAX_PATH {
        return Err(err(
            "too_long",
            format!("resolves to a path longer than {MAX_PATH} bytes"),
        ));
    }
    Ok(text.to_owned())
}

fn check_protocol(v: Option<&Value>) -> Result<String, FieldError> {
    match string("protocol", v)? {
        None | Some("") => Err(field_error(
            "protocol",
            "required",
            format!("choose one of: {}", PROTOCOLS.join(", ")),
        )),
        Some(p) if PROTOCOLS.contains(&p) => Ok(p.to_owned()),
        Some(p) => Err(field_error(
            "protocol",
            "unknown_protocol",
            format!(
                "{:?} is not one of: {}",
                p.chars().take(40).collect::<String>(),
                PROTOCOLS.join(", ")
            ),
        )),
    }
}

fn check_read_only(v: Option<&Value>) -> Result<bool, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(field_error(
            "read_only",
            "invalid",
            format!("must be true or false, not {}", kind(other)),
        )),
    }
}

fn check_comment(v: Option<&Value>) -> Result<String, FieldError> {
    let comment = string("comment", v)?.unwrap_or("");
    if comment.chars().count() > MAX_COMMENT {
        return Err(field_error(
            "comment",
            "too_long",
            format!("longer than {MAX_COMMENT} characters"),
        ));
    }
    if comment.chars().any(char::is_control) {
        return Err(field_error(
            "comment",
            "invalid",
            "must not contain control characters (it is one line)",
        ));
    }
    Ok(comment.to_owned())
}

/// Checks a list of strings; each bad entry is reported as `field[i]`.
/// Duplicates (ignoring case) are refused: they mean nothing and usually hide a typo.
fn check_list(
    field: &str,
    v: Option<&Value>,
    max: usize,
    code: &str,
    check: fn(&str) -> Result<(), String>,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<String>> {
    let items = match v {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(field_error(
                field,
                "invalid",
                format!("must be an array of strings, not {}", kind(other)),
            ));
            return None;
        }
    };
    if items.len() > max {
        errors.push(field_error(
            field,
            "too_long",
            format!("{} entries; at most {max} are allowed", items.len()),
        ));
        return None;
    }
    let before = errors.len();
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::String(s) = item else {
            errors.push(field_error(
                at,
                "invalid",
                format!("must be a string, not {}", kind(item)),
            ));
            continue;
        };
        if let Err(why) = check(s) {
            errors.push(field_error(at, code, why));
            continue;
        }
        if !seen.insert(s.to_ascii_lowercase()) {
            errors.push(field_error(at, "duplicate", format!("{s:?} is listed twice")));
            continue;
        }
        out.push(s.clone());
    }
    (errors.len() == before).then_some(out)
}

/// NFS export host syntax (exports(5)), which Samba's `hosts allow` also
/// understands except `*` (the exporter writes no restriction for it):
/// `*`, an address, a network (`addr/len`, or `addr/netmask` for IPv4), a
/// hostname with optional `*`/`?` wildcards, or a `@netgroup`.
fn check_host(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > MAX_HOST {
        return Err(format!("longer than {MAX_HOST} characters"));
    }
    if s == "*" {
        return Ok(());
    }
    if let Some(group) = s.strip_prefix('@') {
        let ok = group.len() <= 64
            && group.starts_with(|c: char| c.is_ascii_alphanumeric())
            && group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "{s:?} is not a netgroup (@ followed by letters, digits, '_', '-', '.')"
            ))
        };
    }
    if let Some((addr, prefix)) = s.split_once('/') {
        return check_network(addr, prefix);
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if s.contains(':') {
        return Err(format!("{s:?} is not an IPv6 address"));
    }
    check_hostname(s)
}

fn check_network(addr: &str, prefix: &str) -> Result<(), String> {
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address (a network is address/prefix-length)"))?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let len: u32 = if !prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit()) {
        prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?
    } else if let (IpAddr::V4(_), Ok(mask)) = (ip, prefix.parse::<Ipv4Addr>()) {
        let m = u32::from(mask);
        if m.leading_ones() + m.trailing_zeros() != 32 {
            return Err(format!("{prefix} is not a contiguous netmask"));
        }
        m.leading_ones()
    } else {
        return Err(format!("{prefix:?} is not a prefix length (0–{bits})"));
    };
    if len > bits {
        return Err(format!("prefix length {len} is larger than {bits}"));
    }
    let network = match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
            u32::from(a) & u32::MAX.checked_shl(32 - len).unwrap_or(0),
        )),
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(a) & u128::MAX.checked_shl(128 - len).unwrap_or(0),
        )),
    };
    if network != ip {
        return Err(format!(
            "{addr}/{len} has host bits set; the network is {network}/{len}"
        ));
    }
    Ok(())
}

/// RFC 1123 labels, with the `*` and `?` wildcards exports(5) allows.
fn check_hostname(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{:?} is not a hostname: {why}",
            s.chars().take(80).collect::<String>()
        ))
    };
    if s.split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("it looks like an IPv4 address but is not one");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '*' | '?')))
        {
            return bad(&format!(
                "{c:?} is not allowed (letters, digits, '-', and the wildcards '*', '?')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

/// A user or `@group` name as Samba and the system accept it (`$` ends machine accounts).
fn check_user(s: &str) -> Result<(), String> {
    let name = s.strip_prefix('@').unwrap_or(s);
    let name = name.strip_suffix('$').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= MAX_USER
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a user or @group name (lower-case letter or '_' first, then up to {} of a-z 0-9 _ . -, \
             optionally ending in '$')",
            s.chars().take(80).collect::<String>(),
            MAX_USER - 1
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "*",
            "192.168.1.10",
            "192.168.1.0/24",
            "192.168.1.0/255.255.255.0",
            "0.0.0.0/0",
            "fd00::/8",
            "::1",
            "2001:db8::/32",
            "nas.example.com",
            "*.example.com",
            "host?.lan",
            "@trusted",
            "localhost",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}: {:?}", check_host(ok));
        }
        for bad in [
            "",
            "192.168.1.0/33",
            "192.168.1.1/24",
            "192.168.1.0/255.0.255.0",
            "fd00::/129",
            "fd00::/",
            "/24",
            "192.168.1",
            "300.1.1.1",
            "a..b",
            "-a.b",
            "a b",
            "a,b",
            "a(rw)",
            "@",
            "@a b",
            "fe80::1%eth0",
            "192.168.1.0/+24",
        ] {
            assert!(check_host(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn users() {
        for ok in ["alice", "_svc", "@staff", "pc01$", "a.b-c_d", &"a".repeat(32)] {
            assert!(check_user(ok).is_ok(), "{ok}");
        }
        for bad in ["", "@", "Alice", "1abc", "a b", "a:b", &"a".repeat(33), "$", "@@x"] {
            assert!(check_user(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names() {
        let name = |s: &str| check_name(Some(&Value::from(s))).map_err(|e| e.code);
        for ok in ["Media", "backup-2024", "My Files", "a.b_c", "hidden$", "x"] {
            assert_eq!(name(ok), Ok(ok.to_owned()));
        }
        for (bad, code) in [
            ("", "required"),
            ("homes", "reserved_name"),
            ("GLOBAL", "reserved_name"),
            ("C$", "reserved_name"),
            ("IPC$", "reserved_name"),
            ("print$", "reserved_name"),
            (".hidden", "invalid"),
            ("-x", "invalid"),
            ("$", "invalid"),
            (" x", "invalid"),
            ("x ", "invalid"),
            ("a/b", "invalid"),
            ("a$b", "invalid"),
            ("a\tb", "invalid"),
            ("Bücher", "invalid"),
        ] {
            assert_eq!(name(bad), Err(code.to_owned()), "{bad:?}");
        }
        assert_eq!(name(&"a".repeat(81)), Err("too_long".to_owned()));
        assert!(name(&"a".repeat(80)).is_ok());
    }
}
