//! `sigmavault user`: manage user accounts in the data directory while the
//! server is stopped (the running server owns the accounts; use its REST API
//! then).
//!
//! Every change goes through the same transaction helpers as the REST API, so
//! it is validated the same way and writes the same audit record (actor `cli`).
//! Passwords are never taken as arguments (they would show in `ps` and in shell
//! history): they come from stdin (`--password-stdin`) or the environment.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use sigmavault_server::auth::{self, password, service};
use sigmavault_server::config::Config;
use sigmavault_server::store::accounts::{self, Role, User};
use sigmavault_server::store::audit::Actor;
use sigmavault_server::store::{self, Store, StoreConfig, StoreError, WriteTx};

/// The environment variable a new password may come from.
const PASSWORD_ENV: &str = "SIGMAVAULT_NEW_PASSWORD";

/// What is printed when the data directory is held by a running server.
const SERVER_RUNNING: &str = "the server is running on this data dir; stop it, or use the REST API (/api/v1/users)";

/// `sigmavault user …`
#[derive(Args)]
pub(crate) struct UserArgs {
    /// The server's data directory.
    #[arg(long, env = "SIGMAVAULT_DATA_DIR", default_value = "./data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from stdin (--password-stdin) or SIGMAVAULT_NEW_PASSWORD.
    Add {
        /// Login name: 1 to 64 of A-Z a-z 0-9 . _ - (unique ignoring case).
        name: String,
        /// The user's role.
        #[arg(long, value_enum, default_value_t = RoleArg::Viewer)]
        role: RoleArg,
        #[command(flatten)]
        password: PasswordInput,
    },
    /// Set a user's password and revoke all their sessions.
    Passwd {
        /// The user.
        name: String,
        #[command(flatten)]
        password: PasswordInput,
    },
    /// Disable a user: they cannot log in, and their sessions and API keys stop working.
    Disable {
        /// The user.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// The user.
        name: String,
    },
    /// List the users.
    List {
        /// Print `{"users": [...]}` as the REST API does.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    /// Reads everything that is not admin-only.
    Viewer,
    /// Reads and writes everything.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Where a new password comes from.
#[derive(Args)]
struct PasswordInput {
    /// Read the new password from the first line of stdin (else from SIGMAVAULT_NEW_PASSWORD).
    #[arg(long)]
    password_stdin: bool,
    /// Refused: a password on the command line shows in `ps` and shell history.
    #[arg(long, hide = true, allow_hyphen_values = true, value_name = "REFUSED")]
    password: Option<String>,
    /// Anything after NAME is refused, so that a password typed there is never used.
    #[arg(hide = true, allow_hyphen_values = true)]
    stray: Vec<String>,
}

/// Why the command failed, and with which exit status.
enum Failure {
    /// The command line was wrong (exit 2, like clap's own usage errors).
    Usage(String),
    /// Anything else (exit 1).
    Error(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Error(e.to_string())
    }
}

/// Runs `sigmavault user`.
pub(crate) fn main(args: UserArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Error(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

impl PasswordInput {
    /// The new password, checked; never from an argument.
    fn read(&self) -> Result<String, Failure> {
        if self.password.is_some() || !self.stray.is_empty() {
            return Err(Failure::Usage(format!(
                "passwords are never taken as arguments (they show in `ps` and shell history); \
                 pipe it with --password-stdin or set {PASSWORD_ENV}"
            )));
        }
        let pw = if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| Failure::Error(format!("cannot read the password from stdin: {e}")))?;
            let pw = line.strip_suffix('\n').unwrap_or(&line);
            let pw = pw.strip_suffix('\r').unwrap_or(pw);
            if pw.is_empty() {
                return Err(Failure::Error("--password-stdin: stdin gave no password".into()));
            }
            pw.to_owned()
        } else {
            match std::env::var(PASSWORD_ENV) {
                Ok(pw) if !pw.is_empty() => pw,
                _ => {
                    return Err(Failure::Usage(format!(
                        "no password given: pipe it with --password-stdin or set {PASSWORD_ENV}"
                    )));
                }
            }
        };
        service::check_password("password", &pw)?;
        Ok(pw)
    }
}

fn run(args: UserArgs) -> Result<(), Failure> {
    let data_dir = args.data_dir;
    // Everything that can be checked without the store is checked first: a bad
    // command line never touches the data directory.
    let op = match args.command {
        UserCommand::Add { name, role, password } => {
            service::check_username(&name)?;
            let pw = password.read()?;
            Op::Add {
                name,
                role: role.into(),
                hash: password::hash_blocking(&pw)?,
            }
        }
        UserCommand::Passwd { name, password } => {
            let pw = password.read()?;
            Op::Passwd {
                name,
                hash: password::hash_blocking(&pw)?,
            }
        }
        UserCommand::Disable { name } => Op::SetDisabled { name, disabled: true },
        UserCommand::Enable { name } => Op::SetDisabled { name, disabled: false },
        UserCommand::List { json } => Op::List { json },
    };
    if matches!(op, Op::Add { .. }) {
        // A first `user add` may set up a new data directory, as `serve` would.
        sigmavault_server::prepare_data_dir(&data_dir)?;
    } else if !data_dir.join(store::DB_FILE).is_file() {
        return Err(Failure::Error(format!(
            "no database in {} (wrong --data-dir? the server creates it on its first start)",
            data_dir.display()
        )));
    }
    // The running server keeps accounts in memory: never change them behind its back.
    let _lock = store::backup::lock_data_dir(&data_dir).map_err(|e| match e {
        StoreError::InUse { .. } => Failure::Error(format!("{SERVER_RUNNING} ({})", data_dir.display())),
        other => Failure::from(other),
    })?;
    let config = Config {
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    let (store, _) = Store::open(StoreConfig::from(&config))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let result = op.run(&store, &data_dir).await;
        store.close().await;
        result
    })
}

/// One command, validated, with its password already hashed.
enum Op {
    Add { name: String, role: Role, hash: String },
    Passwd { name: String, hash: String },
    SetDisabled { name: String, disabled: bool },
    List { json: bool },
}

/// The user called `name` (ignoring case), or a not-found error naming it.
fn find(tx: &WriteTx<'_>, name: &str) -> Result<User, StoreError> {
    accounts::find_login(tx.conn(), name)?
        .map(|(user, _)| user)
        .ok_or_else(|| StoreError::NotFound(format!("user {name:?}")))
}

fn actor() -> Actor {
    Actor::local("cli")
}

impl Op {
    async fn run(self, store: &Store, data_dir: &Path) -> Result<(), Failure> {
        match self {
            Op::Add { name, role, hash } => {
                let ((user, admins), _) = store
                    .write(move |tx| {
                        let user = service::create_user_tx(tx, &actor(), &name, &hash, role)?;
                        let admins = accounts::other_enabled_admins(tx.conn(), 0)?;
                        Ok((user, admins))
                    })
                    .await?;
                println!(
                    "created user {} (id {}, {})",
                    user.username,
                    user.id,
                    user.role.as_str()
                );
                if admins == 0 {
                    eprintln!(
                        "warning: there is no enabled admin, and the server creates none once users exist; \
                         add one with `sigmavault user add NAME --role admin`"
                    );
                }
            }
            Op::Passwd { name, hash } => {
                let ((user, revoked), _) = store
                    .write(move |tx| {
                        let user = find(tx, &name)?;
                        service::set_password_tx(tx, &actor(), user.id, &hash, "user.password_reset")
                    })
                    .await?;
                let initial = data_dir.join(auth::INITIAL_PASSWORD_FILE);
                let had_initial = initial.exists();
                service::forget_initial_password(data_dir, &user);
                println!(
                    "changed the password of {}; {} session(s) revoked",
                    user.username,
                    revoked.len()
                );
                if had_initial && !initial.exists() {
                    println!("removed {} (no longer valid)", initial.display());
                }
            }
            Op::SetDisabled { name, disabled } => {
                let ((before, after, revoked), _) = store
                    .write(move |tx| {
                        let before = find(tx, &name)?;
                        let (after, revoked) = service::update_user_tx(tx, &actor(), before.id, None, Some(disabled))?;
                        Ok((before, after, revoked))
                    })
                    .await?;
                let state = if disabled { "disabled" } else { "enabled" };
                if before.disabled == after.disabled {
                    println!("{} is already {state}", after.username);
                } else {
                    println!("{state} {}; {} session(s) revoked", after.username, revoked.len());
                }
            }
            Op::List { json } => {
                let users = store.read(accounts::list_users).await?;
                if json {
                    println!("{}", json!({ "users": users }));
                } else {
                    print_table(&users);
                }
            }
        }
        Ok(())
    }
}

fn print_table(users: &[User]) {
    let head = ["ID", "USERNAME", "ROLE", "DISABLED", "LAST LOGIN"];
    let rows: Vec<[String; 5]> = users
        .iter()
        .map(|u| {
            [
                u.id.to_string(),
                u.username.clone(),
                u.role.as_str().to_owned(),
                if u.disabled { "yes" } else { "no" }.to_owned(),
                u.last_login_at.clone().unwrap_or_else(|| "never".to_owned()),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&head);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
}
