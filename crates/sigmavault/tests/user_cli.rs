//! `sigmavault user add | passwd | disable | enable | list` with the real binary on
//! a temporary data directory, and what the server then makes of the accounts:
//! logins with the new passwords, revoked sessions, refused disabled users, the
//! audit records. The command refuses to run while a server holds the directory,
//! and never takes a password as an argument.
mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use common::{ADMIN_PASSWORD, Finished, Server, WAIT, command, http_get_as, login, run_to_exit};

/// `sigmavault user ARGS… --data-dir DIR`.
fn user_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = command(common::bin());
    cmd.arg("user").args(args).arg("--data-dir").arg(dir);
    cmd
}

/// Runs `user ARGS…` with nothing on stdin.
fn user(dir: &Path, args: &[&str]) -> Finished {
    run_to_exit(user_cmd(dir, args), WAIT)
}

/// Runs `user ARGS…` with `input` on stdin.
fn user_with_stdin(dir: &Path, args: &[&str], input: &str) -> Finished {
    let mut child = user_cmd(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sigmavault user");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let (stdout, out_reader) = common::collect_lines(child.stdout.take().expect("stdout"));
    let (stderr, err_reader) = common::collect_lines(child.stderr.take().expect("stderr"));
    let status = common::wait_timeout(&mut child, WAIT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("sigmavault user {args:?} still running after {WAIT:?}");
    });
    let _ = (out_reader.join(), err_reader.join());
    let text = |lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>| {
        lines.lock().expect("lines").iter().map(|l| format!("{l}\n")).collect()
    };
    Finished {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    }
}

/// Runs `user ARGS…` with the new password in `SIGMAVAULT_NEW_PASSWORD`.
fn user_with_env_password(dir: &Path, args: &[&str], password: &str) -> Finished {
    let mut cmd = user_cmd(dir, args);
    cmd.env("SIGMAVAULT_NEW_PASSWORD", password);
    run_to_exit(cmd, WAIT)
}

fn assert_ok(out: &Finished) {
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "nothing on stderr: {out:?}");
}

/// Exit 1, nothing on stdout, one `error: …` line containing every needle.
fn assert_refused(out: &Finished, needles: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one stderr line: {:?}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} in {:?}", lines[0]);
    }
}

/// `user list --json`: the users array.
fn list_json(dir: &Path) -> Vec<Value> {
    let out = user(dir, &["list", "--json"]);
    assert_ok(&out);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {:?}", out.stdout);
    let v: Value = serde_json::from_str(lines[0]).expect("list --json is JSON");
    v["users"].as_array().expect("users array").clone()
}

fn find<'a>(users: &'a [Value], name: &str) -> &'a Value {
    users
        .iter()
        .find(|u| u["username"] == name)
        .unwrap_or_else(|| panic!("{name} in {users:?}"))
}

/// Starts `serve` on `dir` (port 0).
fn serve(dir: &Path) -> Server {
    Server::start_on_port(0, Some(dir), &[], WAIT)
}

fn stop(srv: &mut Server) {
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", srv.log());
}

/// Logs in and expects 200; the access token.
fn access_token(srv: &Server, name: &str, password: &str) -> String {
    let (status, body) = login(srv.addr, name, password);
    assert_eq!(status, 200, "login {name}: {body}");
    body["access_token"].as_str().expect("access_token").to_owned()
}

/// Audit records with `action` (newest first), read with `token`.
fn audit(srv: &Server, token: &str, action: &str) -> Vec<Value> {
    let (status, body) =
        http_get_as(srv.addr, &format!("/api/v1/audit?action={action}"), token, WAIT).expect("GET /api/v1/audit");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("audit is JSON");
    v["records"].as_array().expect("records").clone()
}

#[test]
fn add_then_list_shows_the_users_and_the_server_accepts_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");

    // A first `user add` sets up the data directory (private, like `serve` does).
    let out = user_with_stdin(
        &dir,
        &["add", "alice", "--role", "admin", "--password-stdin"],
        "alice-password\n",
    );
    assert_ok(&out);
    assert_eq!(out.stdout, "created user alice (id 1, admin)\n");
    assert_eq!(
        std::fs::metadata(&dir).expect("data dir").permissions().mode() & 0o777,
        0o700
    );
    // The password from the environment; the role defaults to viewer.
    let out = user_with_env_password(&dir, &["add", "bob"], "bob-password");
    assert_ok(&out);
    assert_eq!(out.stdout, "created user bob (id 2, viewer)\n");

    let out = user(&dir, &["list"]);
    assert_ok(&out);
    let rows: Vec<Vec<&str>> = out.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        vec![
            vec!["ID", "USERNAME", "ROLE", "DISABLED", "LAST", "LOGIN"],
            vec!["1", "alice", "admin", "no", "never"],
            vec!["2", "bob", "viewer", "no", "never"],
        ],
        "{}",
        out.stdout
    );
    let users = list_json(&dir);
    assert_eq!(users.len(), 2, "{users:?}");
    let alice = find(&users, "alice");
    assert_eq!(alice["id"], 1);
    assert_eq!(alice["role"], "admin");
    assert_eq!(alice["disabled"], false);
    assert_eq!(alice["last_login_at"], Value::Null);
    assert_eq!(find(&users, "bob")["role"], "viewer");
    let listed = serde_json::to_string(&users).expect("json");
    assert!(
        !listed.contains("argon2") && !listed.contains("password\""),
        "no hashes: {listed}"
    );

    // Refusals: one line each, exit 1, nothing changed.
    let out = user_with_env_password(&dir, &["add", "ALICE"], "another-password");
    assert_refused(&out, &["already exists"]);
    let out = user_with_env_password(&dir, &["add", "-x"], "another-password");
    assert_eq!(out.status.code(), Some(2), "clap refuses an option-like name: {out:?}");
    let out = user_with_env_password(&dir, &["add", "carol smith"], "another-password");
    assert_refused(&out, &["username", "letters, digits"]);
    let out = user_with_env_password(&dir, &["add", "carol"], "short");
    assert_refused(&out, &["password", "at least 8 characters"]);
    for args in [&["disable", "nobody"][..], &["enable", "nobody"], &["passwd", "nobody"]] {
        let out = user_with_env_password(&dir, args, "nobody-password");
        assert_refused(&out, &["\"nobody\"", "not found"]);
    }
    assert_eq!(list_json(&dir).len(), 2);

    // The server takes the accounts as they are: no generated admin, the CLI's
    // passwords log in, and the changes are in the audit log as the CLI's.
    let mut srv = serve(&dir);
    assert!(
        !dir.join("initial-admin-password").exists(),
        "users exist: no first admin"
    );
    let (status, _) = login(srv.addr, "admin", ADMIN_PASSWORD);
    assert_eq!(status, 401, "no admin account was bootstrapped");
    let token = access_token(&srv, "alice", "alice-password");
    access_token(&srv, "bob", "bob-password");
    let created = audit(&srv, &token, "user.create");
    let actors: Vec<(&str, &str)> = created
        .iter()
        .map(|r| (r["actor"].as_str().unwrap(), r["detail"]["username"].as_str().unwrap()))
        .collect();
    assert_eq!(actors, vec![("cli", "bob"), ("cli", "alice")], "{created:?}");
    stop(&mut srv);
    let users = list_json(&dir);
    assert!(find(&users, "alice")["last_login_at"].is_string(), "{users:?}");
}

#[test]
fn passwd_sets_the_password_the_server_then_accepts_and_revokes_sessions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut srv = serve(&dir);
    let old_session = access_token(&srv, "admin", ADMIN_PASSWORD);
    let (status, me) = http_get_as(srv.addr, "/api/v1/auth/me", &old_session, WAIT).expect("me");
    assert_eq!(status, 200, "{me}");
    stop(&mut srv);

    let out = user_with_stdin(&dir, &["passwd", "admin", "--password-stdin"], "brand-new-password\r\n");
    assert_ok(&out);
    assert!(
        out.stdout
            .starts_with("changed the password of admin; 1 session(s) revoked"),
        "{out:?}"
    );

    let mut srv = serve(&dir);
    let (status, body) = login(srv.addr, "admin", ADMIN_PASSWORD);
    assert_eq!(status, 401, "the old password no longer works: {body}");
    assert_eq!(body["error"]["code"], "invalid_credentials", "{body}");
    let token = access_token(&srv, "admin", "brand-new-password");
    let (status, body) = http_get_as(srv.addr, "/api/v1/auth/me", &old_session, WAIT).expect("me");
    assert_eq!(status, 401, "the session from before is revoked: {body}");
    assert!(body.contains("token_revoked"), "{body}");
    let resets = audit(&srv, &token, "user.password_reset");
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0]["actor"], "cli");
    assert_eq!(resets[0]["detail"]["sessions_revoked"], 1);
    assert!(
        !resets.iter().any(|r| r.to_string().contains("brand-new")),
        "no secret in the log"
    );
    stop(&mut srv);
}

#[test]
fn disable_refuses_the_last_admin_and_a_disabled_user_cannot_log_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    assert_ok(&user_with_env_password(
        &dir,
        &["add", "root", "--role", "admin"],
        "root-password",
    ));

    let out = user(&dir, &["disable", "root"]);
    assert_refused(&out, &["root", "last enabled admin"]);
    assert_eq!(find(&list_json(&dir), "root")["disabled"], false);

    assert_ok(&user_with_env_password(&dir, &["add", "bob"], "bob-password"));
    let out = user(&dir, &["disable", "bob"]);
    assert_ok(&out);
    assert!(out.stdout.starts_with("disabled bob"), "{out:?}");
    let out = user(&dir, &["disable", "bob"]);
    assert_ok(&out);
    assert_eq!(out.stdout, "bob is already disabled\n");
    let out = user(&dir, &["list"]);
    let bob = out.stdout.lines().find(|l| l.contains("bob")).expect("bob listed");
    assert_eq!(bob.split_whitespace().nth(3), Some("yes"), "{bob:?}");

    let mut srv = serve(&dir);
    let (status, body) = login(srv.addr, "bob", "bob-password");
    assert_eq!(status, 401, "disabled: {body}");
    let token = access_token(&srv, "root", "root-password");
    let updates = audit(&srv, &token, "user.update");
    assert_eq!(
        updates.len(),
        1,
        "one change, one record (not the refused one): {updates:?}"
    );
    assert_eq!(updates[0]["actor"], "cli");
    assert_eq!(updates[0]["detail"]["after"]["disabled"], true);
    stop(&mut srv);

    assert_ok(&user(&dir, &["enable", "bob"]));
    // With a second enabled admin, the first one may be disabled.
    assert_ok(&user_with_env_password(
        &dir,
        &["add", "root2", "--role", "admin"],
        "root2-password",
    ));
    assert_ok(&user(&dir, &["disable", "root"]));
    assert_refused(&user(&dir, &["disable", "root2"]), &["last enabled admin"]);

    let mut srv = serve(&dir);
    access_token(&srv, "bob", "bob-password");
    let (status, _) = login(srv.addr, "root", "root-password");
    assert_eq!(status, 401);
    access_token(&srv, "root2", "root2-password");
    stop(&mut srv);
}

#[test]
fn refuses_to_touch_a_data_dir_held_by_a_running_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut srv = serve(&dir);
    for args in [
        &["list"][..],
        &["add", "mallory"],
        &["passwd", "admin"],
        &["disable", "admin"],
        &["enable", "admin"],
    ] {
        let out = user_with_env_password(&dir, args, "mallory-password");
        assert_refused(
            &out,
            &["the server is running on this data dir", "stop it", "/api/v1/users"],
        );
    }
    assert!(srv.is_running());
    let token = access_token(&srv, "admin", ADMIN_PASSWORD);
    let (status, body) = http_get_as(srv.addr, "/api/v1/users", &token, WAIT).expect("users");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("mallory"), "{body}");
    stop(&mut srv);

    let users = list_json(&dir);
    let names: Vec<&str> = users.iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["admin"]);
}

#[test]
fn never_takes_a_password_as_an_argument() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let secret = "hunter2-hunter2";
    let attempts: [&[&str]; 5] = [
        &["add", "carol", secret],
        &["add", "carol", "--password", secret],
        &["add", "carol", "--password=hunter2-hunter2", "--password-stdin"],
        &["passwd", "carol", secret],
        &["passwd", "carol", "--password", secret],
    ];
    for args in attempts {
        // Even with a valid password on stdin, the command line is refused.
        let out = user_with_stdin(&dir, args, "valid-password\n");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(!out.stderr.contains(secret), "the password is not echoed: {out:?}");
        assert!(
            out.stderr.contains("never taken as arguments") && out.stderr.contains("--password-stdin"),
            "{out:?}"
        );
    }
    // No password at all: told where to put it.
    let out = user(&dir, &["add", "carol"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("--password-stdin") && out.stderr.contains("SIGMAVAULT_NEW_PASSWORD"),
        "{out:?}"
    );
    let out = user_with_stdin(&dir, &["add", "carol", "--password-stdin"], "");
    assert_refused(&out, &["stdin"]);
    assert!(!dir.exists(), "nothing was written anywhere");

    let out = user_with_stdin(&dir, &["add", "carol", "--password-stdin"], "valid-password\n");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, "created user carol (id 1, viewer)\n");
    // A viewer alone in a new data directory: the server will not add an admin.
    assert!(out.stderr.starts_with("warning: there is no enabled admin"), "{out:?}");
    assert_eq!(list_json(&dir).len(), 1);
}
