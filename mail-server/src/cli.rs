//! `mail-server accounts add|list|remove|passwd|hash` and `mail-server aliases add|list|remove`:
//! the store's accounts and aliases, on the same data folder the server uses (`--env`,
//! `--config` as for the server). Passwords are read from standard input (one line), never
//! from the command line.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::store::{self, Store, StoreError};

#[derive(Debug, Parser)]
#[command(
    name = "mail-server",
    about = "Accounts and aliases of mail-server's store"
)]
struct ManageCli {
    #[command(subcommand)]
    command: Command,
    /// development, staging or production [default: $QUARTET_ENV, else development]
    #[arg(long, global = true, value_name = "NAME")]
    env: Option<String>,
    /// An extra configuration file; repeatable, later files win.
    #[arg(long = "config", global = true, value_name = "FILE")]
    config: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accounts (the password is read from standard input).
    #[command(subcommand)]
    Accounts(AccountCommand),
    /// Aliases: an address delivered to accounts; `@domain` is the domain's catch-all.
    #[command(subcommand)]
    Aliases(AliasCommand),
    /// The outbound queue.
    #[command(subcommand)]
    Queue(QueueCommand),
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Every queued recipient: entry, state, attempts, next attempt, last error.
    List,
    /// Try entry ID's pending recipients now (the server picks it up within 30 s).
    Retry { id: i64 },
    /// Drop entry ID without delivering or bouncing it.
    Delete { id: i64 },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create ADDRESS (with INBOX, Sent, Drafts, Trash and Junk).
    Add {
        address: String,
    },
    List,
    /// Delete ADDRESS and its mail.
    Remove {
        address: String,
    },
    /// Set ADDRESS's password.
    Passwd {
        address: String,
    },
    /// Print the argon2 hash of a password, for `password_hash` in configuration.
    Hash,
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Deliver mail for ALIAS to the account TARGET (repeat for several targets).
    Add {
        alias: String,
        target: String,
    },
    List,
    Remove {
        alias: String,
    },
}

fn read_password() -> Result<String, StoreError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| StoreError::Invalid(format!("reading the password: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(StoreError::Invalid(
            "no password on standard input (echo 'secret' | mail-server accounts …)".into(),
        ));
    }
    Ok(password)
}

/// Runs `mail-server accounts|aliases …`.
pub fn main() -> ExitCode {
    let cli = ManageCli::parse();
    common::cli::run_command(
        "mail-server",
        common::Role::Mail,
        cli.env.as_deref(),
        cli.config.clone(),
        |config| run(cli.command, config),
    )
}

async fn run(command: Command, config: common::Config) -> Result<String, StoreError> {
    if let Command::Accounts(AccountCommand::Hash) = command {
        return store::hash_password(&read_password()?);
    }
    let store = Store::open_backend(&config.data_dir.join("mail"), &config.mail.store).await?;
    let in_domains = |address: &str| {
        let address = address.to_ascii_lowercase();
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        if config
            .mail
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&domain))
        {
            Ok(address)
        } else {
            Err(StoreError::Invalid(format!(
                "{address} is not in a local domain (mail.domains: {})",
                config.mail.domains.join(", ")
            )))
        }
    };
    // dev@localhost (password dev) is development's own; anywhere else it is a known login.
    let development_account_refused = |address: &str| {
        if address.eq_ignore_ascii_case(common::config::DEV_MAIL_ACCOUNT)
            && config.environment != common::Environment::Development
        {
            Err(StoreError::Invalid(format!(
                "{address} is development's account: {} refuses it",
                config.environment.as_str()
            )))
        } else {
            Ok(())
        }
    };
    let output = match command {
        Command::Accounts(AccountCommand::Add { address }) => {
            let address = in_domains(&address)?;
            development_account_refused(&address)?;
            if store.has_account(&address).await? {
                return Err(StoreError::Invalid(format!("{address} exists: use passwd")));
            }
            let hash = store::hash_password(&read_password()?)?;
            store.put_account(&address, &hash, false).await?;
            format!("created {address}")
        }
        Command::Accounts(AccountCommand::Passwd { address }) => {
            let address = address.to_ascii_lowercase();
            development_account_refused(&address)?;
            if !store.has_account(&address).await? {
                return Err(StoreError::Invalid(format!("no account {address}")));
            }
            let hash = store::hash_password(&read_password()?)?;
            store.put_account(&address, &hash, false).await?;
            format!("password of {address} changed")
        }
        Command::Accounts(AccountCommand::Remove { address }) => {
            if !store.remove_account(&address).await? {
                return Err(StoreError::Invalid(format!("no account {address}")));
            }
            format!("removed {address} and its mail")
        }
        Command::Accounts(AccountCommand::List) => store
            .accounts()
            .await?
            .into_iter()
            .map(|a| {
                if a.from_config {
                    format!("{}\t(configuration)", a.address)
                } else {
                    a.address
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Command::Accounts(AccountCommand::Hash) => String::new(),
        Command::Aliases(AliasCommand::Add { alias, target }) => {
            let alias_domain = if let Some(domain) = alias.strip_prefix('@') {
                format!("x@{domain}")
            } else {
                alias.clone()
            };
            in_domains(&alias_domain)?;
            store.add_alias(&alias, &target).await?;
            format!("{alias} → {target}")
        }
        Command::Aliases(AliasCommand::Remove { alias }) => {
            if !store.remove_alias(&alias).await? {
                return Err(StoreError::Invalid(format!("no alias {alias}")));
            }
            format!("removed {alias}")
        }
        Command::Queue(QueueCommand::List) => {
            let entries = store.queue().await?;
            if entries.is_empty() {
                "the queue is empty".to_owned()
            } else {
                entries
                    .into_iter()
                    .map(|e| {
                        format!(
                            "{}\t{}\t{} -> {}\tattempts {}\tnext {}\t{}",
                            e.queue_id,
                            e.status,
                            if e.sender.is_empty() { "<>" } else { &e.sender },
                            e.recipient,
                            e.attempts,
                            common::clock::readable(e.next_attempt),
                            e.last_error.unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Command::Queue(QueueCommand::Retry { id }) => {
            if !store.retry_now(id).await? {
                return Err(StoreError::Invalid(format!("no pending entry {id}")));
            }
            format!("entry {id} is due now")
        }
        Command::Queue(QueueCommand::Delete { id }) => {
            if !store.delete_queued(id).await? {
                return Err(StoreError::Invalid(format!("no entry {id}")));
            }
            format!("entry {id} deleted")
        }
        Command::Aliases(AliasCommand::List) => store
            .aliases()
            .await?
            .into_iter()
            .map(|(alias, target)| format!("{alias}\t{target}"))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    store.close().await;
    Ok(output)
}
