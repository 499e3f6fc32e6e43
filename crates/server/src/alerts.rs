//! Alerts: threshold rules over the host data that raise a persisted
//! notification once when crossed and a resolving one when cleared.
//!
//! Every sample of a watched source is checked in memory (cheap, on the
//! scheduler's task). A change of an alert's level — raised, escalated,
//! lowered, cleared — is sent to one task that writes it to the `alerts` table
//! and publishes the notification in the same transaction, in order. Active
//! alerts are loaded at start-up, so a restart does not notify again.
//! Hysteresis: a level is left only when the value is `hysteresis` points
//! below the threshold that raised it, so a value hovering at a threshold does
//! not flap.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::store::{Store, StoreError, alerts as rows};

/// Alert levels (notification levels), least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

impl Level {
    /// The notification level.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        match s {
            "warning" => Some(Level::Warning),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }
}

/// Thresholds (`--alert-*` settings).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Filesystem used % (as df computes it) for a warning.
    pub fs_warning: f64,
    /// … and for critical.
    pub fs_critical: f64,
    /// Memory used % (total − available) for critical.
    pub memory_critical: f64,
    /// Disk temperature (°C) for a warning.
    pub disk_temperature: f64,
    /// Points below a threshold before its level is left.
    pub hysteresis: f64,
    /// A breaker open this long raises a warning.
    pub breaker_open: Duration,
}

impl From<&crate::config::Config> for Rules {
    fn from(c: &crate::config::Config) -> Self {
        Rules {
            fs_warning: c.alert_fs_warning,
            fs_critical: c.alert_fs_critical,
            memory_critical: c.alert_memory,
            disk_temperature: c.alert_disk_temperature,
            hysteresis: c.alert_hysteresis,
            breaker_open: c.alert_breaker_open,
        }
    }
}

/// An active alert, as `GET /api/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// What it is about, e.g. `filesystem:/srv`, `memory`, `raid:md0`.
    pub key: String,
    /// Its level.
    pub level: Level,
    /// One line.
    pub title: String,
    /// Details.
    pub message: String,
    /// When it was raised (RFC 3339).
    pub since: String,
}

/// What a check concluded for one key: the level now (None = fine) and the text.
struct Verdict {
    key: String,
    level: Option<Level>,
    title: String,
    message: String,
}

/// A change to write and notify.
enum Change {
    Raise(Alert),
    Clear { alert: Alert, message: String },
}

/// The alert engine; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    rules: Rules,
    active: Arc<Mutex<HashMap<String, Alert>>>,
    changes: mpsc::UnboundedSender<Change>,
    /// Mount points seen writable by this process and still mounted: one of
    /// them turning read-only was remounted, usually after errors.
    writable: Arc<Mutex<HashSet<String>>>,
}

impl Alerts {
    /// Loads the active alerts and starts the task that records changes.
    pub async fn start(
        store: Store,
        rules: Rules,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Alerts, StoreError> {
        let loaded = store.read(rows::active).await?;
        let active: HashMap<String, Alert> = loaded
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.key.clone(),
                    Alert {
                        level: Level::parse(&r.level)?,
                        key: r.key,
                        title: r.title,
                        message: r.message,
                        since: r.since,
                    },
                ))
            })
            .collect();
        let (alerts, rx) = Alerts::detached(rules, active);
        tracker.spawn(record(store, rx));
        Ok(alerts)
    }

    /// An engine whose changes go to the returned receiver.
    fn detached(rules: Rules, active: HashMap<String, Alert>) -> (Alerts, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let alerts = Alerts {
            rules,
            active: Arc::new(Mutex::new(active)),
            changes: tx,
            writable: Arc::default(),
        };
        (alerts, rx)
    }

    /// The active alerts, most severe first.
    pub fn list(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.active.lock().values().cloned().collect();
        v.sort_by(|a, b| b.level.cmp(&a.level).then_with(|| a.key.cmp(&b.key)));
        v
    }

    /// Whether a source's samples feed a rule (such a source always counts as read).
    pub fn watches(&self, source: &str) -> bool {
        source == "system" || source == "storage" || source.starts_with("smart:")
    }

    /// Checks a fresh sample of `source`.
    pub fn on_sample(&self, source: &str, state: &Value) {
        let verdicts = match source {
            "system" => self.memory(state),
            "storage" => {
                let mut v = self.filesystems(state);
                v.extend(self.raid(state));
                v
            }
            s if s.starts_with("smart:") => self.smart(state),
            _ => return,
        };
        // Keys of this source that are active but were not seen now (an unmounted
        // filesystem, a removed array) are cleared.
        let seen: Vec<String> = verdicts.iter().map(|v| v.key.clone()).collect();
        let prefixes: &[&str] = match source {
            "system" => &["memory"],
            "storage" => &["filesystem:", "raid:"],
            _ => &[],
        };
        // A RAID kind whose tool did not answer this time has not disappeared.
        let blind: Vec<String> = state["tools"]
            .as_object()
            .map(|t| {
                t.iter()
                    .filter(|(_, status)| status.as_str() != Some("ok"))
                    .map(|(kind, _)| format!("raid:{kind}:"))
                    .collect()
            })
            .unwrap_or_default();
        let gone: Vec<Alert> = self
            .active
            .lock()
            .values()
            .filter(|a| prefixes.iter().any(|p| a.key.starts_with(p)) && !seen.contains(&a.key))
            .filter(|a| !blind.iter().any(|b| a.key.starts_with(b.as_str())))
            .cloned()
            .collect();
        for a in gone {
            self.apply(Verdict {
                key: a.key.clone(),
                level: None,
                title: a.title.clone(),
                message: "no longer present".into(),
            });
        }
        for v in verdicts {
            self.apply(v);
        }
    }

    /// Resolves alerts about sources this server no longer has (a disk removed
    /// while it was stopped), so they are not listed forever.
    pub fn retain_sources(&self, sources: &[String]) {
        let orphans: Vec<Alert> = self
            .active
            .lock()
            .values()
            .filter(|a| {
                let source = match a.key.split_once(':') {
                    Some(("breaker", rest)) => rest.to_owned(),
                    Some(("smart", rest)) => format!("smart:{}", rest.split(':').next().unwrap_or(rest)),
                    _ => return false,
                };
                !sources.contains(&source)
            })
            .cloned()
            .collect();
        for a in orphans {
            self.apply(Verdict {
                key: a.key.clone(),
                level: None,
                title: a.title.clone(),
                message: "its data source is gone".into(),
            });
        }
    }

    /// Checks a breaker: open longer than the rule allows raises a warning.
    pub fn on_breaker(&self, source: &str, open_for: Option<Duration>) {
        let key = format!("breaker:{source}");
        let level = open_for
            .filter(|d| *d >= self.rules.breaker_open)
            .map(|_| Level::Warning);
        let still_open = open_for.is_some();
        let active = self.active.lock().contains_key(&key);
        // While it stays open (or is half-open between probes), keep the alert.
        if level.is_none() && active && still_open {
            return;
        }
        self.apply(Verdict {
            key,
            level,
            title: format!("data source {source} is failing"),
            message: match open_for {
                Some(d) => format!("its circuit breaker has been open for {} s", d.as_secs()),
                None => "its circuit breaker closed again".into(),
            },
        });
    }

    /// A level with hysteresis: `value` against (warning, critical) thresholds,
    /// given the level now active.
    fn level(&self, value: f64, warning: Option<f64>, critical: f64, now: Option<Level>) -> Option<Level> {
        let h = self.rules.hysteresis;
        let crit_on = value >= critical;
        let crit_stays = now == Some(Level::Critical) && value > critical - h;
        if crit_on || crit_stays {
            return Some(Level::Critical);
        }
        let warning = warning?;
        let warn_on = value >= warning;
        let warn_stays = now.is_some() && value > warning - h;
        (warn_on || warn_stays).then_some(Level::Warning)
    }

    fn current(&self, key: &str) -> Option<Level> {
        self.active.lock().get(key).map(|a| a.level)
    }

    fn memory(&self, state: &Value) -> Vec<Verdict> {
        let Some(pct) = state["memory_pct"].as_f64() else {
            return Vec::new();
        };
        let key = "memory".to_owned();
        let level = self.level(pct, None, self.rules.memory_critical, self.current(&key));
        vec![Verdict {
            title: "memory almost exhausted".into(),
            message: format!("{pct:.1} % of memory in use"),
            key,
            level,
        }]
    }

    fn filesystems(&self, state: &Value) -> Vec<Verdict> {
        let Some(list) = state["filesystems"].as_array() else {
            return Vec::new();
        };
        let mounted: HashSet<&str> = list.iter().filter_map(|f| f["mount_point"].as_str()).collect();
        self.writable.lock().retain(|m| mounted.contains(m.as_str()));
        let mut verdicts: Vec<Verdict> = list.iter().filter_map(|f| self.read_only(f)).collect();
        verdicts.extend(list.iter().filter_map(|f| {
            let mount = f["mount_point"].as_str()?;
            let key = format!("filesystem:{mount}");
            // Usage unknown this time (statvfs failed), or the filesystem is now
            // read-only (nothing more can fill it): the alert stays as it is.
            let pct = f["used_pct"].as_f64().filter(|_| f["options"] != "ro");
            let Some(pct) = pct else {
                let a = self.active.lock().get(&key).cloned()?;
                return Some(Verdict {
                    key,
                    level: Some(a.level),
                    title: a.title,
                    message: a.message,
                });
            };
            let level = self.level(
                pct,
                Some(self.rules.fs_warning),
                self.rules.fs_critical,
                self.current(&key),
            );
            Some(Verdict {
                title: format!("filesystem {mount} is filling up"),
                message: format!("{mount} is {pct} % full"),
                key,
                level,
            })
        }));
        verdicts
    }

    /// A filesystem this server saw writable that is now mounted read-only was
    /// remounted, most often by the kernel after I/O or filesystem errors
    /// (ext4 `errors=remount-ro`): critical until it is writable again or
    /// unmounted. Read-only from the start (an ISO, a snapshot) never alerts.
    fn read_only(&self, f: &Value) -> Option<Verdict> {
        let mount = f["mount_point"].as_str()?;
        let key = format!("filesystem:{mount}:read_only");
        let title = format!("filesystem {mount} became read-only");
        if f["options"] != "ro" {
            self.writable.lock().insert(mount.to_owned());
            return Some(Verdict {
                key,
                level: None,
                title,
                message: format!("{mount} is writable again"),
            });
        }
        let was_writable = self.writable.lock().contains(mount) || self.current(&key).is_some();
        was_writable.then(|| Verdict {
            key,
            level: Some(Level::Critical),
            title,
            message: format!(
                "{mount} was writable and is now mounted read-only, usually after disk or filesystem \
                 errors; check the kernel log (dmesg)"
            ),
        })
    }

    fn raid(&self, state: &Value) -> Vec<Verdict> {
        let Some(list) = state["raid"].as_array() else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|a| {
                let name = a["name"].as_str()?;
                let kind = a["kind"].as_str().unwrap_or("md");
                let health = a["health"].as_str().unwrap_or("ok");
                let bad = a["degraded"] == true || health == "degraded" || health == "failed";
                Some(Verdict {
                    key: format!("raid:{kind}:{name}"),
                    level: bad.then_some(Level::Critical),
                    title: format!("array {name} is degraded"),
                    message: format!("{name} reports {health}"),
                })
            })
            .collect()
    }

    fn smart(&self, state: &Value) -> Vec<Verdict> {
        let Some(disk) = state["disk"].as_str() else {
            return Vec::new();
        };
        let key = format!("smart:{disk}:health");
        // Only a reading decides: a disk asleep (`standby`) or a bridge that
        // answered nothing this time (`unsupported`) keeps the level it had.
        let level = match state["status"].as_str() {
            Some("failed") => Some(Level::Critical),
            Some("passed") => None,
            _ => self.current(&key),
        };
        let mut v = vec![Verdict {
            key,
            level,
            title: format!("disk {disk} is failing"),
            message: format!("SMART reports the health of {disk} as failed"),
        }];
        if let Some(t) = state["temperature_c"].as_f64() {
            let key = format!("smart:{disk}:temperature");
            let level = self.level(t, Some(self.rules.disk_temperature), f64::INFINITY, self.current(&key));
            v.push(Verdict {
                title: format!("disk {disk} is too hot"),
                message: format!("{disk} is at {t} °C"),
                key,
                level,
            });
        }
        v
    }

    /// Compares with the active alert and queues a change when the level moved.
    fn apply(&self, v: Verdict) {
        let mut active = self.active.lock();
        let now = active.get(&v.key).map(|a| a.level);
        if now == v.level {
            return;
        }
        match v.level {
            Some(level) => {
                let since = active
                    .get(&v.key)
                    .map(|a| a.since.clone())
                    .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                let alert = Alert {
                    key: v.key.clone(),
                    level,
                    title: v.title,
                    message: v.message,
                    since,
                };
                active.insert(v.key, alert.clone());
                let _ = self.changes.send(Change::Raise(alert));
            }
            None => {
                if let Some(alert) = active.remove(&v.key) {
                    let _ = self.changes.send(Change::Clear {
                        alert,
                        message: v.message,
                    });
                }
            }
        }
    }
}

/// Writes each change and its notification, one transaction per change, in order.
async fn record(store: Store, mut rx: mpsc::UnboundedReceiver<Change>) {
    while let Some(change) = rx.recv().await {
        let result = match change {
            Change::Raise(a) => {
                tracing::warn!(alert = %a.key, level = a.level.as_str(), "alert raised");
                store
                    .write(move |tx| {
                        rows::upsert(tx.conn(), &a.key, a.level.as_str(), &a.title, &a.message, &a.since)?;
                        tx.publish(
                            "notification",
                            json!({"level": a.level.as_str(), "title": a.title, "message": a.message, "source": "alerts"}),
                        )
                    })
                    .await
            }
            Change::Clear { alert, message } => {
                tracing::info!(alert = %alert.key, "alert cleared");
                store
                    .write(move |tx| {
                        rows::delete(tx.conn(), &alert.key)?;
                        tx.publish(
                            "notification",
                            json!({
                                "level": "info",
                                "title": format!("resolved: {}", alert.title),
                                "message": message,
                                "source": "alerts",
                            }),
                        )
                    })
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "an alert could not be recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::from(&crate::config::Config::default())
    }

    /// The level changes the engine queued so far, as (key, level or None).
    fn drain(rx: &mut mpsc::UnboundedReceiver<Change>) -> Vec<(String, Option<Level>)> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(match c {
                Change::Raise(a) => (a.key, Some(a.level)),
                Change::Clear { alert, .. } => (alert.key, None),
            });
        }
        out
    }

    fn fs(pct: f64) -> Value {
        json!({"filesystems": [{"mount_point": "/srv", "options": "rw", "used_pct": pct}], "raid": []})
    }

    #[test]
    fn filesystem_levels_rise_once_and_fall_with_hysteresis() {
        let (a, mut rx) = Alerts::detached(rules(), HashMap::new());
        let key = || "filesystem:/srv".to_owned();
        let mut seen = Vec::new();
        for pct in [
            89.0, 90.0, 92.0, 94.0, 95.0, 99.0, 91.0, 90.1, 89.9, 86.0, 85.1, 85.0, 84.0, 89.0,
        ] {
            a.on_sample("storage", &fs(pct));
            seen.extend(drain(&mut rx).into_iter().map(|(k, l)| {
                assert_eq!(k, key());
                (pct, l)
            }));
        }
        assert_eq!(
            seen,
            vec![
                (90.0, Some(Level::Warning)),
                (95.0, Some(Level::Critical)),
                (89.9, Some(Level::Warning)),
                (85.0, None),
            ],
            "raised at 90, escalated at 95, lowered below 95-5, cleared at 90-5; no flapping"
        );
        assert!(a.list().is_empty());
    }

    #[test]
    fn an_unmounted_filesystem_clears_its_alert_and_read_only_ones_never_alert() {
        let (a, mut rx) = Alerts::detached(rules(), HashMap::new());
        a.on_sample("storage", &fs(97.0));
        assert_eq!(drain(&mut rx), vec![("filesystem:/srv".into(), Some(Level::Critical))]);
        a.on_sample("storage", &json!({"filesystems": [], "raid": []}));
        assert_eq!(drain(&mut rx), vec![("filesystem:/srv".into(), None)]);
        let ro = json!({"filesystems": [{"mount_point": "/iso", "options": "ro", "used_pct": 100}]});
        a.on_sample("storage", &ro);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_filesystem_remounted_read_only_is_critical_until_writable_again() {
        let (a, mut rx) = Alerts::detached(rules(), HashMap::new());
        let srv = |options: &str, pct: f64| json!({"filesystems": [{"mount_point": "/srv", "options": options, "used_pct": pct}], "raid": []});
        let ro_key = || "filesystem:/srv:read_only".to_owned();
        a.on_sample("storage", &srv("rw", 96.0));
        assert_eq!(drain(&mut rx), vec![("filesystem:/srv".into(), Some(Level::Critical))]);
        // Remounted read-only after errors: a critical alert; the usage alert stays.
        a.on_sample("storage", &srv("ro", 96.0));
        assert_eq!(drain(&mut rx), vec![(ro_key(), Some(Level::Critical))]);
        a.on_sample("storage", &srv("ro", 96.0));
        assert!(drain(&mut rx).is_empty(), "raised once");
        assert_eq!(a.list().len(), 2);
        // Repaired and writable again; then room made.
        a.on_sample("storage", &srv("rw", 96.0));
        assert_eq!(drain(&mut rx), vec![(ro_key(), None)]);
        a.on_sample("storage", &srv("rw", 50.0));
        assert_eq!(drain(&mut rx), vec![("filesystem:/srv".into(), None)]);

        // Read-only again, then unmounted: the alert is cleared with it, and a
        // read-only mount at the same place later is not taken for a remount.
        a.on_sample("storage", &srv("ro", 50.0));
        assert_eq!(drain(&mut rx), vec![(ro_key(), Some(Level::Critical))]);
        a.on_sample("storage", &json!({"filesystems": [], "raid": []}));
        assert_eq!(drain(&mut rx), vec![(ro_key(), None)]);
        a.on_sample("storage", &srv("ro", 50.0));
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn memory_raid_smart_and_breakers() {
        let (a, mut rx) = Alerts::detached(rules(), HashMap::new());
        a.on_sample("system", &json!({"memory_pct": 96.0}));
        a.on_sample("system", &json!({"memory_pct": 92.0}));
        a.on_sample("system", &json!({"memory_pct": 89.0}));
        assert_eq!(
            drain(&mut rx),
            vec![("memory".into(), Some(Level::Critical)), ("memory".into(), None)]
        );
        let raid = |health: &str| json!({"filesystems": [], "raid": [{"name": "md0", "kind": "md", "health": health}]});
        a.on_sample("storage", &raid("degraded"));
        a.on_sample("storage", &raid("rebuilding"));
        a.on_sample("storage", &raid("ok"));
        assert_eq!(
            drain(&mut rx),
            vec![
                ("raid:md:md0".into(), Some(Level::Critical)),
                ("raid:md:md0".into(), None)
            ]
        );
        a.on_sample(
            "smart:sda",
            &json!({"disk": "sda", "status": "failed", "temperature_c": 61}),
        );
        let got = drain(&mut rx);
        assert!(
            got.contains(&("smart:sda:health".into(), Some(Level::Critical))),
            "{got:?}"
        );
        assert!(
            got.contains(&("smart:sda:temperature".into(), Some(Level::Warning))),
            "{got:?}"
        );
        a.on_breaker("system", Some(Duration::from_secs(30)));
        assert!(drain(&mut rx).is_empty(), "not open long enough yet");
        a.on_breaker("system", Some(Duration::from_secs(61)));
        a.on_breaker("system", Some(Duration::from_secs(90)));
        a.on_breaker("system", None);
        assert_eq!(
            drain(&mut rx),
            vec![
                ("breaker:system".into(), Some(Level::Warning)),
                ("breaker:system".into(), None)
            ]
        );
    }

    #[test]
    fn unknown_readings_keep_the_level_instead_of_clearing_it() {
        let (a, mut rx) = Alerts::detached(rules(), HashMap::new());
        a.on_sample("smart:sda", &json!({"disk": "sda", "status": "failed"}));
        a.on_sample("smart:sda", &json!({"disk": "sda", "status": "standby"}));
        a.on_sample("smart:sda", &json!({"disk": "sda", "status": "unsupported"}));
        assert_eq!(drain(&mut rx), vec![("smart:sda:health".into(), Some(Level::Critical))]);
        a.on_sample("storage", &fs(97.0));
        let unknown = json!({"filesystems": [{"mount_point": "/srv", "options": "rw", "used_pct": null}]});
        a.on_sample("storage", &unknown);
        assert_eq!(drain(&mut rx), vec![("filesystem:/srv".into(), Some(Level::Critical))]);
        let zfs = |tool: &str, pools: Value| json!({"filesystems": [], "raid": pools, "tools": {"zfs": tool}});
        a.on_sample(
            "storage",
            &zfs("ok", json!([{"name": "tank", "kind": "zfs", "health": "degraded"}])),
        );
        a.on_sample("storage", &zfs("timeout", json!([])));
        let got = drain(&mut rx);
        assert!(
            got.contains(&("raid:zfs:tank".into(), Some(Level::Critical))),
            "{got:?}"
        );
        assert!(
            !got.contains(&("raid:zfs:tank".into(), None)),
            "a tool timeout is not recovery: {got:?}"
        );
        a.retain_sources(&["system".into()]);
        assert_eq!(
            drain(&mut rx),
            vec![("smart:sda:health".into(), None)],
            "its disk is gone"
        );
    }

    #[test]
    fn active_alerts_loaded_at_start_are_not_raised_again() {
        let mut active = HashMap::new();
        active.insert(
            "memory".to_owned(),
            Alert {
                key: "memory".into(),
                level: Level::Critical,
                title: "t".into(),
                message: "m".into(),
                since: "2026-01-01T00:00:00.000Z".into(),
            },
        );
        let (a, mut rx) = Alerts::detached(rules(), active);
        a.on_sample("system", &json!({"memory_pct": 97.0}));
        assert!(drain(&mut rx).is_empty(), "already active: no second notification");
        assert_eq!(a.list()[0].since, "2026-01-01T00:00:00.000Z");
    }
}
