//! Accounts (argon2 password hashes, never the password), their mailboxes, and aliases.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sqlx::Row as _;

use super::{STANDARD_MAILBOXES, Store, StoreError, now};

/// An account as `mail-server accounts list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub address: String,
    pub from_config: bool,
}

/// An argon2id PHC string for `password`, with a random salt.
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| StoreError::Invalid("no randomness for a salt".into()))?;
    let hash: PasswordHash = argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(hash.to_string())
}

#[allow(dead_code)]
fn unused() -> Result<String, StoreError> {
    Err(StoreError::Invalid(String::new())).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// `Local+tag@Domain` → `local@domain`: the address an account is known by.
pub fn normalize(address: &str) -> String {
    let address = address.trim().to_ascii_lowercase();
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let base = local.split_once('+').map_or(local, |(base, _)| base);
            format!("{base}@{domain}")
        }
        None => address,
    }
}

impl Store {
    /// Adds an account (or replaces its password) with its standard mailboxes.
    pub async fn put_account(
        &self,
        address: &str,
        password_hash: &str,
        from_config: bool,
    ) -> Result<(), StoreError> {
        let address = address.trim().to_ascii_lowercase();
        if !address.contains('@') || address.contains(char::is_whitespace) {
            return Err(StoreError::Invalid(format!(
                "{address:?} is not an address"
            )));
        }
        if address
            .split('@')
            .next()
            .is_some_and(|local| local.contains('+'))
        {
            return Err(StoreError::Invalid(format!(
                "{address}: '+' is for sub-addressing (alice+tag@ reaches alice@), not account names"
            )));
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO accounts (address, password_hash, from_config, created_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT(address) DO UPDATE SET password_hash = excluded.password_hash,
                from_config = excluded.from_config",
        )
        .bind(&address)
        .bind(password_hash)
        .bind(i64::from(from_config))
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query("SELECT id FROM accounts WHERE address = $1")
            .bind(&address)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        for (name, special_use) in STANDARD_MAILBOXES {
            sqlx::query(
                "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(special_use)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_account(&self, address: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM accounts WHERE address = $1")
            .bind(address.trim().to_ascii_lowercase())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query("SELECT address, from_config FROM accounts ORDER BY address")
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Account {
                address: row.get(0),
                from_config: row.get::<i64, _>(1) != 0,
            })
            .collect())
    }

    /// The password hash of the account `address` (exact, after lowercasing).
    pub async fn password_hash(&self, address: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT password_hash FROM accounts WHERE address = $1")
                .bind(address.trim().to_ascii_lowercase())
                .fetch_optional(self.pool())
                .await?
                .map(|row| row.get(0)),
        )
    }

    pub async fn has_account(&self, address: &str) -> Result<bool, StoreError> {
        Ok(self.password_hash(address).await?.is_some())
    }

    /// Accounts from configuration that are no longer in it are removed (their mail too).
    pub async fn keep_config_accounts(&self, addresses: &[String]) -> Result<(), StoreError> {
        for account in self.accounts().await? {
            if account.from_config && !addresses.contains(&account.address) {
                self.remove_account(&account.address).await?;
                tracing::info!(address = %account.address, "account removed from configuration");
            }
        }
        Ok(())
    }

    pub async fn add_alias(&self, alias: &str, target: &str) -> Result<(), StoreError> {
        let target = target.trim().to_ascii_lowercase();
        if !self.has_account(&target).await? {
            return Err(StoreError::Invalid(format!("no account {target}")));
        }
        let alias = alias.trim().to_ascii_lowercase();
        if !alias.contains('@') {
            return Err(StoreError::Invalid(format!(
                "{alias:?} is not an address (or @domain for a catch-all)"
            )));
        }
        sqlx::query("INSERT INTO aliases (address, target) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(alias)
            .bind(target)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn remove_alias(&self, alias: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM aliases WHERE address = $1")
            .bind(alias.trim().to_ascii_lowercase())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn aliases(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT address, target FROM aliases ORDER BY address, target")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The accounts mail to `address` (in a local domain) goes to: the account itself (with
    /// `+tag` dropped), else its alias's targets, else the domain's catch-all; empty if none.
    pub async fn resolve(&self, address: &str) -> Result<Vec<String>, StoreError> {
        let base = normalize(address);
        if self.has_account(&base).await? {
            return Ok(vec![base]);
        }
        let mut targets = self.alias_targets(&base).await?;
        if targets.is_empty()
            && let Some((_, domain)) = base.rsplit_once('@')
        {
            targets = self.alias_targets(&format!("@{domain}")).await?;
        }
        Ok(targets)
    }

    async fn alias_targets(&self, alias: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.target FROM aliases a JOIN accounts c ON c.address = a.target
             WHERE a.address = $1 ORDER BY a.target",
        )
        .bind(alias)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Whether `account` may send as `sender`: its own address (any `+tag`) or an alias of it.
    pub async fn may_send_as(&self, account: &str, sender: &str) -> Result<bool, StoreError> {
        let sender = normalize(sender);
        if sender == normalize(account) {
            return Ok(true);
        }
        Ok(self
            .alias_targets(&sender)
            .await?
            .iter()
            .any(|target| *target == normalize(account)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("s3cret").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "s3cret"));
        assert!(!verify_password(&hash, "guess"));
        assert!(!verify_password("not a hash", "s3cret"));
    }

    #[test]
    fn addresses_normalize_with_sub_addressing() {
        assert_eq!(normalize("Alice+News@Example.TEST"), "alice@example.test");
        assert_eq!(normalize("bob@example.test"), "bob@example.test");
    }
}
